"""Seed path kept for users and the original system's docs: `python3 core/training_queue.py ...` is `cadence queue ...`."""
import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # the repo root, not core/
from core.cli.queue import main; sys.exit(main())  # noqa: E402
