"""The training queue: files per state with their sidecars, and the operator's changes to one file.

    GET    /api/queue                        files per state (deferred/ too) with sidecars
    GET    /api/queue/{name}                 one file with its validation report (404 if in no state)
    POST   /api/queue/{name}/priority  token PriorityRequest {priority}
    POST   /api/queue/{name}/retry     token RetryRequest {priority?}   failed or deferred -> queue; rejected -> inbox
    DELETE /api/queue/{name}           token the file and its sidecars (never the one being trained)

{name} is a file name, an original name or an id prefix (core/queue_store.py
`find`); what cannot be a file name is a 400 before the queue is asked.

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends

from core.http_json import JsonBody
from core.queue_store import QueueEntry, QueueError
from monitoring import sources
from monitoring.protocol import ApiError, PriorityRequest, RetryRequest
from monitoring.routes.dependencies import Feed, QueueName, require_token

router = APIRouter(tags=["queue"])
PRIORITY_BODY = JsonBody(PriorityRequest)
RETRY_BODY = JsonBody(RetryRequest)


@router.get("/api/queue")
async def queue(feed: Feed):
    return await asyncio.to_thread(sources.queue_listing, feed.queue)


@router.get("/api/queue/{name}")
async def queue_file(feed: Feed, name: QueueName):
    try:
        return await asyncio.to_thread(sources.queue_detail, feed.queue, name)
    except QueueError as exc:
        raise ApiError(404, str(exc), "not_found") from None


@router.post("/api/queue/{name}/priority", dependencies=[Depends(require_token)], openapi_extra=PRIORITY_BODY.openapi)
async def set_priority(feed: Feed, name: QueueName, body: Annotated[PriorityRequest, Depends(PRIORITY_BODY)]):
    return await _change(feed.queue.set_priority, name, body.priority)


@router.post("/api/queue/{name}/retry", dependencies=[Depends(require_token)], openapi_extra=RETRY_BODY.openapi)
async def retry(feed: Feed, name: QueueName, body: Annotated[RetryRequest, Depends(RETRY_BODY)]):
    return await _change(feed.queue.retry, name, body.priority)


@router.delete("/api/queue/{name}", dependencies=[Depends(require_token)])
async def remove(feed: Feed, name: QueueName):
    return await _change(feed.queue.remove, name)


async def _change(operation: Callable[..., QueueEntry], *args) -> dict:
    """Run one TrainingQueue operation in a worker thread; its refusals become 404 (no such file) or 409."""
    try:
        entry = await asyncio.to_thread(operation, *args)
    except QueueError as exc:
        msg = str(exc)
        missing = "no such file" in msg
        raise ApiError(404 if missing else 409, msg, "not_found" if missing else "conflict") from None
    except FileNotFoundError as exc:
        raise ApiError(409, f"the file moved while being changed: {exc}", "conflict") from None
    return {"ok": True, "name": entry.name, "state": entry.state, "priority": entry.meta.priority}
