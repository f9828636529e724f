"""Admin token for mutating HTTP endpoints (inference /admin/*, monitor controls).

The token lives in the file `auth.admin_token_file` (relative to base_dir); the
environment variable CADENCE_ADMIN_TOKEN overrides it. When neither exists the
file is created with a random token, mode 0600, so a fresh install is never
open. Servers compare presented tokens in constant time.

Library only; used as:
    token = admin_token(cfg)
    ok = token_matches(bearer_token(request.headers.get("authorization")), token)
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "CADENCE_ADMIN_TOKEN"


def admin_token_path(cfg) -> Path:
    return cfg.resolve(cfg.auth.admin_token_file)


def admin_token(cfg, create: bool = True) -> str:
    """The admin token: $CADENCE_ADMIN_TOKEN, else the token file (created 0600 with a random token if absent)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    path = admin_token_path(cfg)
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    if not create:
        raise FileNotFoundError(f"{path}: no admin token (and ${ENV_VAR} is not set)")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: if another process created it first, use theirs.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    logger.info("created admin token file %s (0600)", path)
    return token


def bearer_token(authorization: str | None) -> str | None:
    """`Bearer abc` -> `abc`; anything else -> None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(presented: str | None, expected: str | None) -> bool:
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
