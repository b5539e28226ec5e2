import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers (rf_probe, ...) importable
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads that sleep at barriers instead of spinning: on a small shared CI machine a
# spinning thread waits for a descheduled one in every one of the many small kernels (measured:
# up to 10x slower occlusion sweeps under load). Set before torch is imported; inherited by the
# notebook kernels nbval starts. Results do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
