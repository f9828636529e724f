"""The engines tests/test_openai_conformance.py runs against, what each implements, and how to start each.

Add an engine by appending its name to ENGINES, its row to CAPABILITIES and a branch to `serve()`; the
conformance module then runs every test against it. Engine differences are rows of the table, never skips:
a field an engine does not implement must be a 400 naming that field there.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from tests.inference_support import ADMIN_TOKEN, LiveServer

ENGINES = ["builtin"]
MODEL = "cadence-tiny"
MAX_TOKENS_CAP = 1900


@dataclass(frozen=True)
class Capabilities:
    """What an engine does with the OpenAI fields beyond the common core (chat, completions, logprobs, echo,
    list prompts, models.retrieve, nulls, penalties, logit_bias, top_k, seed)."""

    implements: frozenset = field(default_factory=frozenset)  # OPTIONAL_FIELDS keys it honours (else: 400)
    refuses_unknown_fields: bool = True                       # a field OpenAI does not define is a 400


CAPABILITIES = {
    "builtin": Capabilities(implements=frozenset()),
}


def config(tmp_path_factory, model_dir, engine: str):
    from core.config import from_dict

    base = tmp_path_factory.mktemp(f"cadence-{engine}")
    (base / "control").mkdir()
    (base / "control" / "admin.token").write_text(ADMIN_TOKEN + "\n")
    cfg = from_dict({"paths": {"base_dir": str(base)},
                     "model": {"base_model": str(model_dir), "max_length": 256},
                     "training": {"micro_batch_tokens": 512},
                     "inference": {"max_tokens_cap": MAX_TOKENS_CAP, "max_model_len": 2048, "max_batch_size": 8}},
                    base)
    cfg.layout.ensure()
    return cfg


@contextlib.contextmanager
def serve(engine: str, cfg):
    """A live server for `engine` on loopback: yields an object with `.url` (no /v1)."""
    if engine == "builtin":
        with LiveServer(cfg) as srv:
            yield srv
        return
    if engine == "vllm":
        # Cadence's front with inference.engine=vllm (tests/vllm_support.py). Not yet in ENGINES: vLLM-CPU has no
        # attention kernel for the micro model's head_dim 16 (this module's model), and its CAPABILITIES row is
        # still to be measured; tests/test_vllm_engine.py covers the vLLM engine meanwhile.
        from tests.vllm_support import serve_vllm
        with serve_vllm(cfg) as srv:
            yield srv
        return
    raise ValueError(f"no way to start engine {engine!r}")
