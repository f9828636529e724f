"""`python -m data_manager.skills`: a built-in skill server's process entry (services.py starts it); same as `cadence skills serve`.

Run as:
    cadence skills serve binary|syllo [--port 8090]      (or: python -m data_manager.skills ...)
"""
import sys

from core.cli.skill_server import main

sys.exit(main(prog="python -m data_manager.skills"))
