"""Optional dependencies by name: a missing one says which extra of pyproject.toml installs it.

Only a package that is itself absent becomes `MissingExtra` ("pip install -e
'.[lora]'"); an ImportError raised from inside an installed package, or from
Cadence's own modules, is a real error and propagates unchanged.

Run as: imported by the modules that use an extra (no entry point).
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> the extra in pyproject.toml [project.optional-dependencies] that installs it
EXTRAS = {
    "peft": "lora",          # training.mode=lora, exporting a LoRA adapter
    "gguf": "export",        # cadence export --format gguf
    "trl": "bench",          # benchmarks/ baselines
    "datasets": "bench",
    "openai": "test",        # the conformance tests' real client
    "lm_eval": "test",
    "llama_cpp": "test",     # llama-cpp-python: loads an exported GGUF in the tests
}


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, extra: str | None = None, why: str | None = None) -> ModuleType:
    """Import `module` (e.g. "peft", "gguf.quants"), or raise MissingExtra naming `pip install -e '.[EXTRA]'`."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top)
    if extra is None:
        raise ValueError(f"{module}: not an optional dependency of Cadence (add it to core.extras.EXTRAS)")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in (top, module):  # something the package itself imports is broken: not ours to rename
            raise
        for_what = f" (needed for {why})" if why else ""
        raise MissingExtra(f"{top} is not installed{for_what}: pip install -e '.[{extra}]'", name=top) from exc
