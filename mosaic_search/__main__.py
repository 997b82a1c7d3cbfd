"""`python -m mosaic_search` (also the torchrun entry point)."""

import sys

from .cli.commands import main

sys.exit(main())
