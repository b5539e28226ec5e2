"""``python -m zfwidgets.cli ...`` (and ``torchrun ... -m zfwidgets.cli mine ...``)."""

import sys

from . import main

sys.exit(main())
