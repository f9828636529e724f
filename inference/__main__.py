"""`python -m inference`: the inference server's process entry (services.py and systemd start it); same as `cadence serve`.

Run as:
    cadence serve [--config config.json] [--set inference.port=8765]      (or: python -m inference ...)
"""
import sys

from core.cli.serve import main

sys.exit(main(prog="python -m inference"))
