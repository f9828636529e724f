"""Whether a trainer process compiles its training steps (`training.compile`), see trainer/fast_path.py for what.

Scope: only the forward of a training step (grad enabled) runs compiled code;
evaluation, preview generation and the KV-cache path stay eager, so they never
trigger recompiles. The compiled kernels are cached on disk
(`<base_dir>/.cache/torchinductor`, or `$TORCHINDUCTOR_CACHE_DIR`), so a new
trainer process for the next file pays seconds, not the cold compile. If the
backend cannot compile here, Dynamo runs the graph eagerly.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch

# The user's own kernel cache directory, read before anything imports Dynamo (which sets a default in os.environ).
USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

logger = logging.getLogger(__name__)


def backend_available(device: torch.device) -> tuple[bool, str]:
    """Can Inductor generate code on this device? (CPU: a C++ compiler; CUDA: Triton.)"""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed"
        return True, "Triton"
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None or not shutil.which(compiler):
        return False, "no C++ compiler (g++/clang++) on PATH"
    return True, compiler


def decide(setting: str, device: torch.device) -> tuple[bool, str]:
    """(compile may be used in this process?, why) for the `training.compile` setting; `auto` then decides per file.
    Whether the model itself qualifies (architecture, LoRA, gradient checkpointing) is `fast_path.supported`."""
    if setting == "off":
        return False, "training.compile = off"
    ok, why = backend_available(device)
    if setting == "on":
        if not ok:
            logger.warning("training.compile = on but %s; training runs eagerly", why)
        return ok, why
    return ok, f"auto: {why}"
