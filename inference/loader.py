"""Load a model folder into a standby `ModelEngine`, refusing anything that is not safe to serve.

Checks, in order, each failing with a `ModelLoadError` whose `code` names the
problem: the folder exists; the version label (given, the manifest's
`version`, else the folder name) is valid (core/version_label.py);
`manifest.json` lists every model file in the folder (weights and shards,
config, generation config, tokenizer files, chat template: a file it does not
list would be read unverified; `manifest_incomplete`) and matches each one
(digest and size, via core.manifest); the config parses and names a causal-LM
architecture; the weights load with no missing, unexpected or mis-shaped
tensor; the tokenizer loads and agrees with the config (vocabulary fits,
end token inside it, a chat template); every weight is finite; the smoke
test (inference/smoke.py: the prompt alone, then a mixed-length batch)
generates with finite logits. Nothing here touches the version
that is serving.

Library only: `load_engine(path, version, cfg)`.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core.manifest import (MANIFEST_NAME, TRAINING_STATE_DIR, ManifestError, content_id, coverage_problems, read_manifest,
                           verify_manifest)
from core.state.base import StateError
from core.state.trainer_state import STATE_FILE, read_trainer_state
from core.version_label import InvalidLabel, check_label
from inference.engine import ModelEngine, NonFiniteLogits
from inference.smoke import smoke_test

logger = logging.getLogger(__name__)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class ModelLoadError(Exception):
    """A model folder that must not serve; `code` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _global_step(folder: Path, manifest: dict | None) -> int | None:
    if manifest and isinstance(manifest.get("global_step"), int):
        return manifest["global_step"]
    try:
        state = read_trainer_state(folder / TRAINING_STATE_DIR)
        if state is not None:
            return state.global_step
    except StateError as exc:
        logger.warning("%s", exc)
    try:  # a folder saved by Hugging Face's Trainer keeps its own trainer_state.json at the top
        step = json.loads((folder / STATE_FILE).read_text()).get("global_step")
        if isinstance(step, int):
            return step
    except (OSError, ValueError, AttributeError):
        pass
    m = re.search(r"checkpoint-(\d+)$", folder.name)
    return int(m.group(1)) if m else None


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _dtype(name: str, device: torch.device):
    if name == "float32" or (name == "auto" and device.type == "cpu"):
        return torch.float32
    if name == "float16":
        return torch.float16
    if name == "bfloat16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass
class VerifiedFolder:
    """A model folder that passed every check short of generating: what an engine is built from."""
    folder: Path
    version: str
    manifest: dict | None
    config: object
    model: object
    tokenizer: object
    report: dict
    started: float


def verify_folder(path: str | Path, version: str | None, cfg, require_manifest: bool | None = None,
                  device: torch.device | None = None) -> VerifiedFolder:
    """Every check of a folder but the smoke prompt (manifest, architecture, tokenizer, finite weights), on `device`
    (default: the serving device). Raises ModelLoadError. inference/vllm_engine.py verifies on CPU with this."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    folder = Path(path)
    icfg = cfg.inference
    if require_manifest is None:
        require_manifest = icfg.require_manifest
    report: dict = {"path": str(folder), "checks": []}
    if not folder.is_dir():
        raise ModelLoadError("not_found", f"{folder}: no such model folder")

    manifest = None
    has_manifest = (folder / MANIFEST_NAME).exists()
    if not has_manifest and require_manifest:
        raise ModelLoadError("manifest_missing", f"{folder}: no {MANIFEST_NAME} (a digest per file is required to deploy)")
    listed = read_manifest(folder) if has_manifest else None
    if has_manifest and listed is None:
        raise ModelLoadError("manifest_mismatch", f"{folder}/{MANIFEST_NAME}: unreadable or without a `files` object")
    # The label travels in headers and paths: checked before anything is hashed or loaded.
    try:
        if version is not None:
            version = check_label(version, "`version`")
        elif listed is not None and listed.get("version") is not None:
            version = check_label(listed["version"], f"{folder}/{MANIFEST_NAME} `version`")
        else:
            version = check_label(folder.name, f"{folder}: the folder name (used as the label when none is given; "
                                               "pass `version`)")
    except InvalidLabel as exc:
        raise ModelLoadError("invalid_version", str(exc)) from None
    report["version"] = version
    if listed is not None:
        # Every file the loader may read must be listed, or it would be served unverified.
        problems = coverage_problems(folder, listed)
        if problems:
            raise ModelLoadError("manifest_incomplete", f"{folder}/{MANIFEST_NAME}: " + "; ".join(problems[:10])
                                 + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
        try:
            manifest = verify_manifest(folder, model_only=True)
        except ManifestError as exc:
            raise ModelLoadError("manifest_mismatch", str(exc)) from None
        report["checks"].append("manifest")

    trust = bool(cfg.model.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for unreadable configs
        raise ModelLoadError("bad_config", f"{folder}/config.json: {type(exc).__name__}: {exc}") from None
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ModelLoadError("wrong_architecture", f"{folder}: architectures {archs} is not a causal LM")

    device = device or _device()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=_dtype(cfg.model.dtype, device), trust_remote_code=trust,
            output_loading_info=True)
    except Exception as exc:  # shape mismatches, unreadable safetensors, unknown model types
        raise ModelLoadError("wrong_architecture", f"{folder}: weights do not load as {archs}: {type(exc).__name__}: {exc}") from None
    bad = {k: sorted(str(x) for x in info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ModelLoadError("wrong_architecture", f"{folder}: weights do not match config {archs}: "
                             + "; ".join(f"{k}: {', '.join(v[:5])}{' …' if len(v) > 5 else ''}" for k, v in bad.items()))
    model.to(device).eval()
    report["checks"].append("architecture")

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError("bad_tokenizer", f"{folder}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except Exception as exc:  # missing/corrupt tokenizer files surface as OSError/ValueError/TypeError
        raise ModelLoadError("bad_tokenizer", f"{folder}: tokenizer does not load: {type(exc).__name__}: {exc}") from None
    vocab = int(config.vocab_size)
    problems = []
    if len(tokenizer) > vocab:
        problems.append(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}")
    elif len(tokenizer) < vocab // 2:
        # Legal (ids stay in range) but unusual: Qwen3's own tokenizer fills ~99.8% of its vocab.
        logger.warning("%s: tokenizer has only %d tokens for a model with vocab_size %d", folder, len(tokenizer), vocab)
    probe = icfg.smoke_prompt
    if tokenizer.decode(tokenizer(probe, add_special_tokens=False)["input_ids"]) != probe:
        problems.append(f"tokenizer does not round-trip {probe!r}")
    if tokenizer.eos_token_id is None or not 0 <= tokenizer.eos_token_id < vocab:
        problems.append(f"end token id {tokenizer.eos_token_id} is not inside the vocabulary")
    if not getattr(tokenizer, "chat_template", None):
        problems.append("no chat template")
    if problems:
        raise ModelLoadError("tokenizer_mismatch", f"{folder}: " + "; ".join(problems))
    report["checks"].append("tokenizer")

    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            # One fp32-accumulated sum per tensor (~20x faster than an elementwise pass on a 0.6B model); a non-finite
            # sum is confirmed elementwise, so a huge-but-finite tensor whose sum overflows is not refused.
            if tensor.is_floating_point() and not torch.isfinite(tensor.sum(dtype=torch.float32)) \
                    and not torch.isfinite(tensor).all():
                raise ModelLoadError("nonfinite_weights", f"{folder}: tensor {name} holds NaN/Inf")
    report["checks"].append("finite_weights")
    return VerifiedFolder(folder, version, manifest, config, model, tokenizer, report, t0)


def load_engine(path: str | Path, version: str | None, cfg, require_manifest: bool | None = None) -> tuple[ModelEngine, dict]:
    """Load and verify `path`; returns (engine, report). Raises ModelLoadError on any failed check."""
    verified = verify_folder(path, version, cfg, require_manifest)
    folder, version, manifest, config = verified.folder, verified.version, verified.manifest, verified.config
    model, tokenizer, report, t0, icfg = verified.model, verified.tokenizer, verified.report, verified.started, cfg.inference

    max_context = int(getattr(config, "max_position_embeddings", 0) or 0) or 4096
    if icfg.max_model_len:
        max_context = min(max_context, icfg.max_model_len)
    engine = ModelEngine(model, tokenizer, version, str(folder.resolve()), _global_step(folder, manifest),
                         max_context, content_id(manifest) if manifest else None)
    try:
        smoke = smoke_test(engine, icfg.smoke_prompt, icfg.smoke_tokens)
    except NonFiniteLogits as exc:
        raise ModelLoadError("smoke_failed", f"{folder}: smoke prompt: {exc}") from None
    except Exception as exc:  # any failure to generate (template errors, shape errors at runtime)
        raise ModelLoadError("smoke_failed", f"{folder}: smoke prompt failed: {type(exc).__name__}: {exc}") from None
    if not smoke["smoke_tokens"] and not engine.eos_token_ids:
        raise ModelLoadError("smoke_failed", f"{folder}: smoke prompt generated nothing")
    report["checks"] += ["smoke", "smoke_batch"]
    report.update(smoke)
    report["global_step"] = engine.global_step
    report["load_seconds"] = round(time.monotonic() - t0, 3)
    logger.info("loaded %s from %s in %.2fs (checks: %s)", version, folder, report["load_seconds"], ", ".join(report["checks"]))
    return engine, report
