"""Cadence's training engine: a library with no daemon knowledge (see trainer/engine.py)."""
from trainer.checkpoint import CheckpointError, DiskFullError, latest_checkpoint, list_checkpoints
from trainer.data import DataError, EncodedExample, encode_examples, load_tokenizer
from trainer.engine import ConfigMismatchError, FileResult, NonFiniteLossError, TrainerEngine, TrainingHooks

__all__ = ["TrainerEngine", "TrainingHooks", "FileResult", "NonFiniteLossError", "ConfigMismatchError",
           "DiskFullError", "CheckpointError", "DataError", "EncodedExample", "encode_examples", "load_tokenizer",
           "latest_checkpoint", "list_checkpoints"]
