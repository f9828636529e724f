"""Upload a .jsonl file into inbox/, where the daemon validates it like any dropped file.

    POST /api/upload?filename=NAME.jsonl[&priority=][&schema_id=]   token, 202
         raw body (application/octet-stream, application/x-ndjson, application/jsonl, application/json or no
         Content-Type), at most monitor.upload_max_bytes

The body streams to a hidden `.upload-*.part` file (fsynced), the job sidecar
(priority, schema_id) is written first, and a rename into place is the
watcher's cue that the file is complete. A name taken in inbox/ or in any
queue state gets a `-2`, `-3`, ... suffix: an upload never overwrites.

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Request

from core.procs import live_pid
from core.state.queue_records import JOB_SUFFIX, JobSidecar, write_job_sidecar
from core.watcher import queue_name
from monitoring.feed import LiveFeed
from monitoring.protocol import ApiError, Priority
from monitoring.routes.dependencies import Cfg, Feed, require_token

logger = logging.getLogger(__name__)

router = APIRouter(tags=["upload"])
UPLOAD_PATH = "/api/upload"
UPLOAD_TYPES = ("", "application/octet-stream", "application/x-ndjson", "application/jsonl", "application/json")
_place_lock = threading.Lock()  # two uploads of one name must not pick the same free name
# the body is the file itself, not JSON: shown as such in the OpenAPI document
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_TYPES if t}}}


@router.post(UPLOAD_PATH, dependencies=[Depends(require_token)], status_code=202, openapi_extra=UPLOAD_BODY)
async def upload(request: Request, cfg: Cfg, feed: Feed, filename: str | None = None, priority: Priority | None = None,
                 schema_id: str | None = None):
    name = _upload_name(filename)
    tmp, size, sha = await _receive(request, feed.layout.inbox, cfg.monitor.upload_max_bytes)
    job = {k: v for k, v in {"priority": priority, "schema_id": schema_id}.items() if v}
    try:
        final = await asyncio.to_thread(_place, feed, tmp, name, job)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    running = live_pid(feed.layout.pid_file("daemon")) is not None
    logger.info("upload %r -> inbox/%s (%d bytes)", filename, final, size)
    return {"inbox_name": final, "original_name": filename, "bytes": size, "sha256": sha, "job": job or None,
            "daemon_running": running,
            "message": (f"placed in inbox/{final}; the daemon validates it (spec + QUICK) like any dropped file "
                        "and the events log shows 'enqueued' or 'rejected' with the reason")
                       + ("" if running else "; the daemon is NOT running: it will be validated when it starts")}


def _upload_name(raw: str | None) -> str:
    """A safe inbox name from a client-supplied file name, or ApiError (same rules as the inbox watcher)."""
    if not raw or not raw.strip():
        raise ApiError(400, "`filename` query parameter is required", "missing_filename")
    base = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()  # never a path: only the last component
    if not base.endswith(".jsonl"):
        raise ApiError(400, f"{base!r}: only .jsonl files are accepted", "unsupported_extension")
    # control characters, shell metacharacters, '..' and leading dots become '_' or go, as for a drop
    return queue_name([base])


async def _receive(request: Request, inbox: Path, limit: int) -> tuple[Path, int, str]:
    """The body streamed into a hidden part file in inbox/: (its path, size, sha256); 413 past `limit`."""
    inbox.mkdir(parents=True, exist_ok=True)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload is {int(declared)} bytes; the limit is {limit} (monitor.upload_max_bytes)",
                       "too_large")
    # hidden + .part: the watcher ignores it until the rename in _place
    tmp = inbox / f".upload-{os.getpid()}-{time.time_ns()}.part"
    size = 0
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"upload exceeds {limit} bytes (monitor.upload_max_bytes)", "too_large")
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise ApiError(400, "empty upload", "empty_file")
    return tmp, size, digest.hexdigest()


def _place(feed: LiveFeed, tmp: Path, name: str, job: dict) -> str:
    """Rename the part file to a free name in inbox/ (its job sidecar first); returns the name."""
    inbox = feed.layout.inbox
    with _place_lock:
        final = _free_inbox_name(feed, name)
        if job:  # the sidecar first: the watcher takes a data file together with its NAME.job.json
            write_job_sidecar(inbox / (final[: -len(".jsonl")] + JOB_SUFFIX), JobSidecar(**job))
        os.rename(tmp, inbox / final)  # a rename into place: the watcher's cue that the file is complete
        return final


def _free_inbox_name(feed: LiveFeed, name: str) -> str:
    """`name`, or name-2.jsonl, ... free in inbox/ and in every queue state (so the queue keeps it as is)."""
    inbox = feed.layout.inbox
    stem = name[: -len(".jsonl")]
    n = 1
    candidate = name
    while True:
        if not (inbox / candidate).exists() and feed.queue.unique_name(candidate) == candidate:
            return candidate
        n += 1
        candidate = f"{stem}-{n}.jsonl"
