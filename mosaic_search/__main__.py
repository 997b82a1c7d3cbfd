"""`python -m mosaic_search` (also the torchrun entry point)."""

import sys

from .cli import main

sys.exit(main())
