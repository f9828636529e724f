"""`python -m core.cli ...` is the `cadence` command (for a checkout whose console script is not installed)."""
import sys

from core.cli import main

sys.exit(main())
