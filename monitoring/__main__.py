"""`python -m monitoring`: the monitor's process entry (services.py and systemd start it); same as `cadence monitor`.

Run as:
    cadence monitor [--config config.json] [--port 8080]      (or: python -m monitoring ...)
"""
import sys

from core.cli.monitor import main

sys.exit(main(prog="python -m monitoring"))
