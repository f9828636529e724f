"""Cadence's training engine: a library with no daemon knowledge (see trainer/engine.py).

Names are imported lazily so that light users (the daemon reads checkpoint
listings through trainer.checkpoint) never import torch.
"""
from importlib import import_module

_EXPORTS = {
    "TrainerEngine": "trainer.engine", "TrainingHooks": "trainer.engine", "FileResult": "trainer.engine",
    "NonFiniteLossError": "trainer.engine", "ConfigMismatchError": "trainer.engine",
    "DiskFullError": "trainer.checkpoint", "CheckpointError": "trainer.checkpoint",
    "latest_checkpoint": "trainer.checkpoint", "list_checkpoints": "trainer.checkpoint",
    "DataError": "trainer.data", "EncodedExample": "trainer.data", "encode_examples": "trainer.data",
    "load_tokenizer": "trainer.data",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
