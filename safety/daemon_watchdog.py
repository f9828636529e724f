"""Seed path kept for users and the original system's docs: `python3 safety/daemon_watchdog.py ...` is `cadence watchdog ...`."""
import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # the repo root, not safety/
from core.cli.watchdog import main; sys.exit(main())  # noqa: E402
