"""The compiled training forward for Qwen3-architecture models on padding-free packed rows.

`TrainerEngine` runs a training step's forward through `PackedForward` when the
model qualifies (`supported()`), instead of transformers' module forward. It is
the same computation as `Qwen3Model` + the LM head (tests compare loss and every
gradient against it), written as two pure functions per layer around the
attention call, so that:

- Inductor compiles each function once for every layer and every packed-row
  length: the token dimension is marked *unbacked* (size-oblivious), so there
  is no recompile when a step's token count crosses a kernel heuristic's
  threshold, and no guard on it. The norms, RoPE, SiLU x up and the residual
  adds fuse into a few loops, forward and backward.
- The q/k/v projections run as one GEMM on the concatenated weights, and gate/up
  as another (larger GEMMs, and one input-gradient GEMM instead of three plus
  the adds); the weights stay separate parameters, so checkpoints are the
  model's own format.
- Attention stays eager: `trainer.attention.varlen_attention_forward`'s
  per-example SDPA (PyTorch has no CPU varlen kernel with a backward, and
  FlexAttention has no CPU backward).
- The final norm and the LM head run on the supervised positions only, the
  cross-entropy fused into the same compiled function.

Anything else (LoRA adapters, sliding-window layers, biases, another
architecture, gradient checkpointing) keeps the transformers forward.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import rotate_half

from trainer.attention import varlen_attention_forward
from trainer.compile import USER_CACHE_DIR

SUPPORTED_MODEL_TYPES = ("qwen3",)


def supported(model) -> tuple[bool, str]:
    """Can `PackedForward` run this (unwrapped) model exactly? (yes/no, why)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False, f"model type {getattr(cfg, 'model_type', None)!r} has no compiled path"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return False, f"activation {cfg.hidden_act!r}"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False, "biases in the projections"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False, "sliding-window layers"
    if getattr(cfg, "attention_dropout", 0.0):
        return False, "attention dropout"
    if getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False)):
        return False, "gradient checkpointing"
    decoder = model.get_decoder()
    for layer in decoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(m) is not torch.nn.Linear for m in linears):
            return False, "adapted projections (LoRA)"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False, f"rope type {rope.get('rope_type')!r}"
    return True, "qwen3 packed forward"


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Qwen3RMSNorm, operation for operation.
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def attention_in(h, cos, sin, w_norm, w_q, w_k, w_v, w_qn, w_kn, *, eps: float, heads: int, kv_heads: int,
                 head_dim: int):
    """input norm -> q/k/v (one GEMM) -> q/k norms -> RoPE. h [1, T, d], cos/sin [1, T, D];
    returns q [1, H, T, D], k/v [1, KV, T, D]."""
    tokens = h.shape[1]
    h, cos, sin = h[0], cos[0], sin[0]
    x = _rms_norm(h, w_norm, eps)
    qkv = F.linear(x, torch.cat((w_q, w_k, w_v)))
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    q = _rms_norm(q.reshape(tokens, heads, head_dim), w_qn, eps).transpose(0, 1)
    k = _rms_norm(k.reshape(tokens, kv_heads, head_dim), w_kn, eps).transpose(0, 1)
    v = v.reshape(tokens, kv_heads, head_dim).transpose(0, 1)
    cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)  # [1, T, D] against [H, T, D]
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)


def attention_out_mlp(attn, h, w_o, w_norm, w_gate, w_up, w_down, *, eps: float):
    """o_proj + residual -> post norm -> SwiGLU (gate/up as one GEMM) + residual. attn [1, T, H, D], h [1, T, d]."""
    h = h + F.linear(attn.flatten(2), w_o)
    x = _rms_norm(h, w_norm, eps)
    gate, up = F.linear(x, torch.cat((w_gate, w_up))).chunk(2, dim=-1)
    return h + F.linear(F.silu(gate) * up, w_down)


def head_loss(h, targets, w_norm, w_head, *, eps: float):
    """Final norm + LM head + summed cross-entropy, on the supervised rows only."""
    logits = F.linear(_rms_norm(h, w_norm, eps), w_head)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def summed_loss(loss_fn, h: torch.Tensor, targets: torch.Tensor, vocab: int, max_logits: int, prepare=None):
    """loss_fn(h, targets) summed over rows; when rows x vocab logits exceed max_logits (150k vocabularies), in
    row chunks whose logits are recomputed in backward instead of kept. `prepare(h, targets)` may adapt each piece."""
    prepare = prepare or (lambda hh, yy: (hh, yy))
    if h.shape[0] * vocab <= max_logits:
        return loss_fn(*prepare(h, targets))
    chunk = max(1, max_logits // vocab)
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk):
        total = total + torch.utils.checkpoint.checkpoint(loss_fn, *prepare(h[s:s + chunk], targets[s:s + chunk]),
                                                          use_reentrant=False)
    return total


class PackedForward:
    """Summed supervised CE of a packed batch, through compiled per-layer functions (or the same functions eagerly)."""

    def __init__(self, model, compile: bool, cache_dir: Path | None = None, gemm_autotune: bool = False):
        cfg = model.config
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.eps = cfg.rms_norm_eps
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.compiled = compile
        self._cache_dir = cache_dir
        self._gemm_autotune = gemm_autotune
        self._in, self._out, self._head = attention_in, attention_out_mlp, head_loss
        self._wrapped = not compile

    def _wrap(self) -> None:
        """Wrap the functions with torch.compile at the first step, not at set-up: importing Dynamo costs ~0.8 s,
        which a process that only loads, evaluates or generates should not pay."""
        self._wrapped = True
        # Importing Dynamo (accelerate does) writes its default, /tmp/torchinductor_<user>, into the environment,
        # so what counts is the value from before that (USER_CACHE_DIR); Inductor reads it at every compile.
        if self._cache_dir is not None and USER_CACHE_DIR is None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self._cache_dir)
        # If the backend cannot build a graph here, Dynamo runs it eagerly instead of failing the step.
        torch._dynamo.config.suppress_errors = True
        options = None
        if self._gemm_autotune and self.head.weight.device.type == "cpu":
            # Inductor's C++ GEMM template (epilogue fusion) timed against ATen per matmul, the faster one kept
            options = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
        self._in, self._out, self._head = (torch.compile(f, dynamic=True, options=options)
                                           for f in (self._in, self._out, self._head))

    def _mark(self, *tensors, shape_id: str, dim: int = 1):
        # Inputs are whole tensors, never views: Dynamo guards on a view's base, which differs between calls.
        if self.compiled:
            from torch._dynamo.decorators import mark_unbacked

            for t in tensors:
                mark_unbacked(t, dim, shape_id=shape_id)

    def loss_sum(self, batch, targets_mask: torch.Tensor, max_logits: int) -> torch.Tensor:
        if not self._wrapped:
            self._wrap()
        d = self.decoder
        ids, pos = batch.input_ids, batch.position_ids
        h = d.embed_tokens(ids)
        cos, sin = d.rotary_emb(h, pos)
        shapes = dict(eps=self.eps, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim)
        for layer in d.layers:
            a, m = layer.self_attn, layer.mlp
            self._mark(h, cos, sin, shape_id="tokens")
            q, k, v = self._in(h, cos, sin, layer.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight,
                               a.v_proj.weight, a.q_norm.weight, a.k_norm.weight, **shapes)
            o, _ = varlen_attention_forward(a, q, k, v, None, scaling=self.scaling,
                                            cu_seq_lens_q=batch.cu_seq_lens)  # [1, T, H, D]
            self._mark(o, h, shape_id="tokens")
            h = self._out(o, h, a.o_proj.weight, layer.post_attention_layernorm.weight, m.gate_proj.weight,
                          m.up_proj.weight, m.down_proj.weight, eps=self.eps)
        hs, ys = h[0][targets_mask], batch.targets[0][targets_mask]
        w_norm, w_head = d.norm.weight, self.head.weight

        def prepare(hh, yy):  # whole tensors (a chunk is a view), token dim unbacked
            hh, yy = (hh, yy) if hh.shape[0] == hs.shape[0] else (hh.clone(), yy.clone())
            self._mark(hh, yy, shape_id="targets", dim=0)
            return hh, yy

        return summed_loss(lambda hh, yy: self._head(hh, yy, w_norm, w_head, eps=self.eps), hs, ys, w_head.shape[0],
                           max_logits, prepare)
