"""`python -m management`: the lifecycle worker's process entry (services.py starts it); same as `cadence lifecycle`.

Run as:
    cadence lifecycle [--config config.json] [--once]      (or: python -m management ...)
"""
import sys

from core.cli.lifecycle import main

sys.exit(main(prog="python -m management"))
