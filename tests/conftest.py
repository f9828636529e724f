"""Shared fixtures: an offline HF environment, tiny models built in-process, a config rooted in a tmp dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent  # on sys.path through pyproject's pytest pythonpath

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory) -> Path:
    """A ~100k-parameter Qwen3 with its own BPE tokenizer and ChatML template (for fast tests)."""
    from scripts.make_tiny_model import build_model

    return build_model(tmp_path_factory.mktemp("models") / "micro", preset="micro")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The default ~4M-parameter demo model (for tests where the model must learn)."""
    from scripts.make_tiny_model import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny")


@pytest.fixture
def make_config(tmp_path, micro_model_dir):
    """Factory: a CadenceConfig rooted at a fresh tmp base_dir, using the micro model, with overrides."""
    from core.config import from_dict

    def _make(overrides: dict | None = None, base_dir: Path | None = None, model_dir: Path | None = None):
        base = Path(base_dir or tmp_path / "cadence")
        data = {
            "paths": {"base_dir": str(base)},
            "model": {"base_model": str(model_dir or micro_model_dir), "max_length": 256},
            "training": {"learning_rate": 1e-3, "warmup_steps": 2, "micro_batch_tokens": 512,
                         "eval_steps": 0, "save_steps": 1000, "log_steps": 1},
            "safety": {"min_free_disk_gb": 0},
        }
        for dotted, value in (overrides or {}).items():
            node = data
            keys = dotted.split(".")
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
        cfg = from_dict(data, base)
        cfg.layout.ensure()
        return cfg

    return _make
