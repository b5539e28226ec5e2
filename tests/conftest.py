import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (rf_probe, ...) importable
os.environ.setdefault("MPLBACKEND", "Agg")
