"""What changes when a training step runs on several processes (`training.distributed` = ddp | fsdp).

The engine stays one program for every world size; this module holds the few
pieces that differ:

- `make_accelerator`: accelerate's `Accelerator` for the world the launcher set up
  (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the environment, see
  core/launch.py). DDP is accelerate's own; FSDP2 is accelerate's plugin (full
  shard, reshard after forward, its tied-embedding grouping). accelerate only
  enables FSDP for GPU-type backends, so on CPU (gloo) the state is switched to
  FSDP explicitly after the process group exists: the same `fsdp2_prepare_model`
  then shards the model, which is how the CPU tests prove the path.
- `LossModule`: the module that gets wrapped. Its forward is the whole training
  loss (decoder, LM head on the supervised positions, summed cross-entropy), so
  DDP's reducer is armed by a forward through the wrapper even when the compiled
  per-layer functions run inside it, and FSDP2's root hooks run before any layer.
- `local_micro_batches`: a step's micro-batches shared out round-robin; a rank
  with fewer real ones runs a zero-weighted copy so every rank makes the same
  number of forward/backward passes (the collectives must match).
- `full_tensor` / `shard_like`: FSDP2's sharded parameters and optimizer moments
  gathered to full tensors for a checkpoint (the on-disk format is the one a
  single process writes) and cut back into this rank's shard on load.
- `agree`: a step-boundary decision (pause / stop) taken by rank 0 and broadcast,
  combined with any rank's own SIGTERM, so every rank acts at the same step.
"""
from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def make_accelerator(cfg, precision: str, cpu: bool):
    """The Accelerator for `training.distributed` in the world the launcher set up."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    mode = cfg.training.distributed
    if mode == "none" or world_size() == 1:
        if world_size() > 1:
            raise RuntimeError("WORLD_SIZE > 1 but training.distributed = none")
        return Accelerator(mixed_precision=precision, cpu=cpu)
    # A rank that waits for a peer (a pause is polled every 0.25 s on all ranks) never waits this long; a dead
    # peer is noticed by the launcher, which kills the group, long before.
    kwargs = [InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.training.distributed_timeout))]
    if mode == "ddp":
        # The engine compiles its per-layer functions itself, before wrapping, and DDP's reducer syncs the gradients
        # through autograd hooks. dynamo's DDP optimizer would also split those compiled graphs at DDP's bucket
        # boundaries; with the layers of qwen3-0.6b (several 25 MB buckets a layer) the code it generated failed at
        # run time (NameError inside inductor's output, torch 2.13, benchmarks/train_throughput.py --processes).
        import torch._dynamo

        torch._dynamo.config.optimize_ddp = "no_optimization"
        return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=kwargs)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                            auto_wrap_policy="transformer_based_wrap",
                                            state_dict_type="FULL_STATE_DICT")
    acc = Accelerator(mixed_precision=precision, cpu=cpu, fsdp_plugin=plugin, kwargs_handlers=kwargs)
    if acc.distributed_type != DistributedType.FSDP:
        # MULTI_CPU (gloo): accelerate's prepare honours FSDP once the state says so; FSDP2 on CPU is torch's own.
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
        if precision != "no":
            plugin.set_mixed_precision(precision)
    return acc


class LossModule(nn.Module):
    """The wrapped training module: forward(batch, mask) = summed supervised cross-entropy (see engine)."""

    def __init__(self, net: nn.Module, loss_fn):
        super().__init__()
        self.net = net
        self._loss_fn = loss_fn  # (net, batch, mask) -> scalar; not a submodule
        self._no_split_modules = getattr(net, "_no_split_modules", None)

    # accelerate's FSDP2 preparation groups the embeddings and the final norm/head through these
    def get_input_embeddings(self):
        return self.net.get_input_embeddings()

    def get_output_embeddings(self):
        return self.net.get_output_embeddings()

    def forward(self, batch, mask, last_logits: bool = False):
        if last_logits:  # greedy decoding through the root (FSDP2 gathers the shards in its hooks)
            hidden = self.net.get_decoder()(input_ids=batch, use_cache=False).last_hidden_state
            return self.net.get_output_embeddings()(hidden[:, -1]).float()
        return self._loss_fn(self.net, batch, mask)


def local_micro_batches(micro: list, rank_: int, world: int) -> list[tuple[object, float]]:
    """This rank's share of one step's micro-batches, as (micro-batch, weight): round-robin, padded with
    zero-weighted copies of the step's first micro-batch so that every rank runs ceil(len/world) passes."""
    if world <= 1:
        return [(m, 1.0) for m in micro]
    mine = [(m, 1.0) for m in micro[rank_::world]]
    passes = -(-len(micro) // world)
    mine += [(micro[0], 0.0)] * (passes - len(mine))
    return mine


def all_reduce_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


ACTIONS = (None, "pause", "stop")


def agree(local: str | None, device) -> str | None:
    """Rank 0's action (its own reading of the controller), or 'stop' if any rank was asked to stop."""
    import torch.distributed as dist

    code = torch.tensor([ACTIONS.index(local)], dtype=torch.int64, device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return ACTIONS[int(code)]


def wait_for_peers(beat, interval: float = 0.2) -> None:
    """A barrier that keeps this rank's heartbeat going (`beat()`) while it waits, e.g. for rank 0 to write a
    checkpoint: a rank blocked silently in a collective would look stuck to the anti-stuck monitor."""
    import torch.distributed as dist

    work = dist.barrier(async_op=True)
    while not work.is_completed():
        beat()
        time.sleep(interval)
    work.wait()


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t, keep: bool = True):
    """A DTensor gathered to a full CPU tensor (a collective: every rank calls it); other tensors as they are.
    keep=False: take part in the gather but drop the result (None), so this rank never holds the full copy."""
    if is_dtensor(t):
        full = t.full_tensor()
        return full.detach().cpu() if keep else None
    if not keep:
        return None
    return t.detach().cpu() if torch.is_tensor(t) else t


def _writer() -> bool:
    """The rank that writes checkpoints (0); the others only take part in the gathers."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> full tensor of every parameter and persistent buffer, on rank 0 (the writer; every rank takes part
    in the gathers, in one order, and the others keep nothing: a full copy of the weights on every rank would
    cost each one what FSDP2 saves). A tied weight is gathered once and appears under each of its names as one
    tensor, as in the model's own state dict, so save_pretrained drops the tied copy as it always does."""
    keep = _writer()
    gathered: dict[int, torch.Tensor] = {}
    out = {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in gathered:
            gathered[id(value)] = full_tensor(value, keep)
        if keep:
            out[name] = gathered[id(value)]
    return out


def full_optimizer_state(optimizer) -> dict:
    """The optimizer's state dict with every sharded moment gathered (the single-process on-disk format), on
    rank 0; the other ranks take part in the gathers and get the state dict without its tensors."""
    keep = _writer()
    sd = optimizer.state_dict()
    state = {}
    for i, s in sd["state"].items():
        values = {k: full_tensor(v, keep) for k, v in s.items()}
        if keep:
            state[i] = values
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_like(full: torch.Tensor, like):
    """Cut a full tensor into the shard `like` (a DTensor parameter) holds on this rank."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer) -> dict:
    """A full (single-process format) optimizer state dict made to fit `optimizer`'s sharded parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    out = {}
    for index, values in state["state"].items():
        p = params[int(index)]
        out[index] = {k: shard_like(v, p) if is_dtensor(p) and torch.is_tensor(v) and v.dim() > 0 else v
                      for k, v in values.items()}
    return {"state": out, "param_groups": state["param_groups"]}
