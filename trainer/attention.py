"""Varlen attention for padding-free packed rows, registered with transformers' AttentionInterface.

With `cu_seq_lens_q` in the forward kwargs (set by `PackedBatch.model_kwargs`),
each example of the packed row attends causally to itself only, computed segment
by segment with PyTorch SDPA: no T x T mask is built and no work is spent on
cross-example blocks. Without it (generation, padded batches) the call is plain
SDPA. On CUDA with flash-attn installed, `flash_attention_2` consumes the same
kwargs natively.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "cadence_varlen"


@torch.compiler.disable  # a Python loop over data-dependent segments: eager even inside compiled layers
def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # GQA is expanded inside SDPA (enable_gqa) instead of materialising repeated K/V. The row is cut with split(),
    # not per-segment slicing: the backward of N slices allocates and sums N full-size zero gradients (O(N*T)),
    # while split's backward is one concatenation.
    sizes = cu.diff().tolist()
    dropout = dropout if module.training else 0.0
    if query.device.type == "cpu" and dropout == 0.0 and query.dtype == torch.float32:
        return _VarlenFlashCPU.apply(query, key, value, sizes, scaling), None
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    outs = [
        torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True,
                                                         enable_gqa=gqa)
        for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
    ]
    # One copy straight into the [1, T, H, D] layout the output projection wants (a fresh tensor, not a view).
    return torch.cat([o.transpose(1, 2) for o in outs], dim=1), None


class _VarlenFlashCPU(torch.autograd.Function):
    """Causal attention of every segment of a packed row with PyTorch's CPU flash kernels, as ONE autograd node.

    Same kernels and bit-identical results as the per-segment SDPA loop, with one cat per output and per
    gradient instead of an autograd node, split, cat and transpose per segment and layer (~30 segments x 4
    layers per step of the tiny model), which was ~3% of a compiled training step. Inputs [1, H, T, D]
    (GQA: fewer K/V heads); output [1, T, H, D].
    """

    @staticmethod
    def forward(ctx, query, key, value, sizes, scale):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        outs, lses, start = [], [], 0
        for n in sizes:
            end = start + n
            o, lse = flash(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], 0.0, True,
                           scale=scale)
            outs.append(o.transpose(1, 2))
            lses.append(lse)
            start = end
        out = torch.cat(outs, dim=1)  # one copy into [1, T, H, D]
        ctx.save_for_backward(query, key, value, out, *lses)
        ctx.sizes, ctx.scale = sizes, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        query, key, value, out, *lses = ctx.saved_tensors
        grads, start = [], 0
        for n, lse in zip(ctx.sizes, lses):
            end = start + n
            grads.append(flash_bwd(grad_out[:, start:end].transpose(1, 2), query[:, :, start:end],
                                   key[:, :, start:end], value[:, :, start:end], out[:, start:end].transpose(1, 2),
                                   lse, 0.0, True, scale=ctx.scale))
            start = end
        dq, dk, dv = (torch.cat(parts, dim=2) for parts in zip(*grads))
        return dq, dk, dv, None, None


def _mask(*args, **kwargs):
    # Packed rows carry no padding: the kernel above applies causality per segment.
    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    AttentionInterface.register(NAME, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)
    return NAME
