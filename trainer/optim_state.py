"""Optimizer state on disk as safetensors: `training_state/optimizer.safetensors`, or shards
`optimizer-0000i-of-0000n.safetensors` of ~1 GB each for a large model.

`torch.save` of an AdamW state dict goes through the zip/pickle writer, which on this
kind of machine ran at ~350 MB/s (13.9 s for Qwen3-0.6B's 4.8 GB of moments) where
safetensors writes the same tensors at ~1.3 GB/s (3.6 s). Tensors are stored as
`state.<param index>.<name>`; everything else of the state dict (param_groups,
non-tensor state values) is JSON in the safetensors header. Loading reads every
tensor straight into process memory (no file mapping left behind a training run;
the header is checked against the file size and each tensor's shape), and reads a
legacy `optimizer.pt` too. Shards let a checkpoint hash and flush one part while the
next is written, so little of that work is left after the last write.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from trainer.checkpoint import optimizer_state_files

FILE_NAME = "optimizer.safetensors"
SHARD_PATTERN = "optimizer-{:05d}-of-{:05d}.safetensors"
SHARD_BYTES = 1 << 30  # per file: the checkpoint's sealer hashes and flushes a shard while the next one is written
LEGACY_NAME = "optimizer.pt"
FORMAT = "cadence-optimizer/1"


class OptimizerStateError(ValueError):
    """An optimizer state file that cannot be turned back into a state dict; the message names the file."""


def state_files(state_dir: Path) -> list[Path]:
    """The optimizer state file(s) of a checkpoint's training_state/ to load; empty when pruned by retention."""
    files = optimizer_state_files(state_dir)  # the one place that knows the names (trainer.checkpoint)
    shards = [p for p in files if p.name not in (FILE_NAME, LEGACY_NAME)]
    return shards or [p for p in files if p.name == FILE_NAME] or [p for p in files if p.name == LEGACY_NAME]


def save(state_dict: dict, state_dir: Path, seal=None) -> list[Path]:
    """Write the state into `state_dir` as one file, or as shards of ~SHARD_BYTES (each passed to `seal` as soon
    as it is written); returns the files."""
    from safetensors.torch import save_file

    tensors, other = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            key = f"state.{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().to("cpu").contiguous()
            else:
                other[f"{index}.{name}"] = value
    shards: list[dict] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    meta = {"format": FORMAT, "param_groups": json.dumps(state_dict["param_groups"]), "other": json.dumps(other),
            "indices": json.dumps(list(state_dict["state"])), "shards": str(len(shards))}
    paths = []
    for i, shard in enumerate(shards):
        path = Path(state_dir) / (FILE_NAME if len(shards) == 1 else SHARD_PATTERN.format(i + 1, len(shards)))
        save_file(shard, str(path), metadata=meta)
        if seal is not None:
            seal(path)
        paths.append(path)
    return paths


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a safetensors file, read straight into freshly allocated tensors (one copy from the page
    cache; copying out of a file mapping page by page ran 2-4x slower here), and the header's metadata."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        n = int.from_bytes(fh.read(8), "little")
        if n <= 0 or 8 + n > size:
            raise OptimizerStateError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        header = json.loads(fh.read(n))
        meta = header.pop("__metadata__", None) or {}
        tensors = {}
        position = 0
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise OptimizerStateError(f"{path}: tensor {key}: unsupported dtype {info['dtype']}")
            tensor = torch.empty(info["shape"], dtype=dtype)
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            if end - begin != len(view) or begin != position or 8 + n + end > size:
                raise OptimizerStateError(f"{path}: tensor {key}: data offsets {begin}-{end} do not match its "
                                          f"shape {info['shape']} / the file size {size}")
            got = 0
            while got < len(view):
                chunk = fh.readinto(view[got:])
                if not chunk:
                    raise OptimizerStateError(f"{path}: truncated in tensor {key}")
                got += chunk
            tensors[key] = tensor
            position = end
    return tensors, meta


def load(paths: Path | list[Path]) -> dict:
    """A state dict for `optimizer.load_state_dict` (tensors on CPU, in process memory) from the file(s) that
    `state_files` lists."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if len(paths) == 1 and paths[0].name.endswith(".pt"):
        return torch.load(paths[0], map_location="cpu", weights_only=True)
    tensors, meta = {}, None
    for path in paths:
        try:
            part, part_meta = _read_tensors(path)
        except OptimizerStateError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OptimizerStateError(f"{path}: unreadable optimizer state: {exc!r}") from exc
        if part_meta.get("format") != FORMAT:
            raise OptimizerStateError(f"{path}: not a Cadence optimizer state (format {part_meta.get('format')!r})")
        tensors.update(part)
        meta = meta or part_meta
    where = paths[0].parent
    expected = int(meta.get("shards", 1))
    if len(paths) != expected:
        missing = sorted({SHARD_PATTERN.format(i, expected) for i in range(1, expected + 1)} - {p.name for p in paths})
        raise OptimizerStateError(f"{where}: optimizer state has {len(paths)} of {expected} shards "
                                  f"(missing: {', '.join(missing) or 'mismatched names'})")
    try:
        groups = json.loads(meta["param_groups"])
        other = json.loads(meta["other"])
        state: dict = {int(index): {} for index in json.loads(meta["indices"])}
        for key, tensor in tensors.items():
            _, index, name = key.split(".", 2)
            state[int(index)][name] = tensor
        for key, value in other.items():
            index, name = key.split(".", 1)
            state[int(index)][name] = value
    except (ValueError, KeyError, TypeError) as exc:
        raise OptimizerStateError(f"{where}: unreadable optimizer state: {exc!r}") from exc
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


# safetensors dtype names -> torch
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
