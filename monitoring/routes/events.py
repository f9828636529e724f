"""The events log and the live feed (server-sent events).

    GET /api/events?limit=200&source=   status/events.jsonl, newest first
    GET /api/stream                     SSE: hello (or replay), then metric, event and status messages as they come;
                                        `Last-Event-ID` (or ?last_event_id=) replays what a reconnecting client missed

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from monitoring.feed import LiveFeed, finite
from monitoring.routes.dependencies import Feed

router = APIRouter(tags=["events"])

SSE_RETRY_MS = 1000
SSE_PING_S = 15


@router.get("/api/events")
async def events(feed: Feed, limit: int = Query(200, ge=1, le=2000), source: str | None = None):
    return {"events": feed.events.recent(limit, source)}


@router.get("/api/stream")
async def stream(request: Request, feed: Feed, last_event_id: str | None = None):
    asked = request.headers.get("last-event-id") or last_event_id
    seq, replayable = feed.resume_point(asked)
    return EventSourceResponse(_messages(feed, seq, replayable, reset=bool(asked)), ping=SSE_PING_S,
                               headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _messages(feed: LiveFeed, seq: int, replayable: bool, reset: bool):
    """A stream's messages from `seq` on, until the monitor closes its streams."""
    if replayable:
        yield ServerSentEvent(json.dumps({"boot": feed.boot, "replay_from": seq}), event="replay", retry=SSE_RETRY_MS)
    else:
        # a fresh client, another monitor boot, or older than the buffer: start from a snapshot
        hello = {"boot": feed.boot, "seq": seq, "status": feed.current_status(), "reset": reset}
        yield ServerSentEvent(json.dumps(finite(hello), default=str), event="hello", id=feed.event_id(seq),
                              retry=SSE_RETRY_MS)
    while not feed.closing:
        for m in feed.after(seq):
            seq = m.seq
            yield ServerSentEvent(m.data, event=m.event, id=feed.event_id(m.seq))
        await feed.wait_after(seq, SSE_PING_S)
