"""Speed benchmarks, each a script run from the repository root: `python benchmarks/NAME.py --help`."""
