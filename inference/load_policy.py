"""Which folders POST /admin/models/load may load: the path policy of box B.

A load path is a string from the network (behind the admin token), so:

- it must be a plausible path: at most MAX_PATH_CHARS characters, no NUL or
  other control character (400 `invalid_value`, before anything touches the
  file system);
- relative paths are relative to `paths.base_dir`; the folder is resolved
  (every symlink followed) and must lie inside one of the load roots:
  `models/` under base_dir, every local deploy target's folder (its
  `server_path`, else its destination) and `inference.load_roots`
  (403 `path_not_allowed`);
- the folder itself and every file in it must not be a symlink (403
  `path_not_allowed`): Cadence writes model folders with copies and hard
  links only, and a symlink would let content from elsewhere (outside the
  roots, or changing after the manifest check) be served.

The start-up model (`inference.model_path` / `model.base_model`) is the
operator's own configuration and is not confined. Library only.
"""
from __future__ import annotations

import os
from pathlib import Path

from inference.loader import ModelLoadError
from management.deploy_transport import parse_destination

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_NAME_BYTES = 255   # NAME_MAX: one path component


class InvalidPath(ValueError):
    """A load path that cannot be a path at all (too long, control characters)."""


def check_path_text(path: str) -> str:
    if len(path) > MAX_PATH_CHARS:
        raise InvalidPath(f"`path` is {len(path)} characters long; at most {MAX_PATH_CHARS}")
    bad = next((c for c in path if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidPath(f"`path` contains the control character {bad!r}")
    long = next((part for part in path.split("/") if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise InvalidPath(f"`path` has a component of {len(long)} characters (a file name is at most {MAX_NAME_BYTES} bytes)")
    return path


def load_roots(cfg) -> list[Path]:
    """The folders loads may come from, resolved."""
    roots = [cfg.layout.models]
    for target in cfg.deploy.targets:
        if target.server_path:
            roots.append(cfg.resolve(target.server_path))
        else:
            dest = parse_destination(cfg, target.destination)
            if dest.kind == "local":
                roots.append(Path(dest.location))
    roots += [cfg.resolve(r) for r in cfg.inference.load_roots]
    return [Path(os.path.realpath(r)) for r in roots]


def check_load_folder(cfg, path: str) -> Path:
    """The folder `path` names if the policy allows loading it; ModelLoadError("path_not_allowed") otherwise."""
    try:
        return _check_load_folder(cfg, path)
    except (OSError, ValueError) as exc:  # a path the file system refuses (too long, loops, encodings)
        raise ModelLoadError("not_found", f"{path[:300]!r}: not a readable folder ({type(exc).__name__}: {exc})") from None


def _check_load_folder(cfg, path: str) -> Path:
    folder = cfg.resolve(path)
    real = Path(os.path.realpath(folder))
    roots = load_roots(cfg)
    if not any(real == r or r in real.parents for r in roots):
        raise ModelLoadError("path_not_allowed", f"{folder}: outside the folders models may be loaded from "
                             f"({', '.join(str(r) for r in roots)}; add one to inference.load_roots)")
    if folder.is_symlink():
        raise ModelLoadError("path_not_allowed", f"{folder}: is a symlink (to {os.readlink(folder)}); load the folder "
                                                 "itself")
    if real.is_dir():
        for dirpath, dirnames, filenames in os.walk(real):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    raise ModelLoadError("path_not_allowed", f"{folder}: {p.relative_to(real)} is a symlink; model "
                                                             "folders hold copies or hard links only")
    return folder
