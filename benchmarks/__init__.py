"""Speed and behaviour benchmarks, run from the repository root as modules: `python -m benchmarks.NAME --help`."""
