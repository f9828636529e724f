"""Metric history from the in-memory index, min-max downsampled to a point budget.

    GET /api/metrics?kind=train|eval&fields=loss,loss_ema&max_points=2000&step_min=&step_max=

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from monitoring.protocol import ApiError
from monitoring.routes.dependencies import Cfg, Feed

router = APIRouter(tags=["metrics"])


@router.get("/api/metrics")
async def metrics(cfg: Cfg, feed: Feed, kind: str = "train", fields: str = "loss,loss_ema",
                  max_points: int | None = Query(None, ge=10), step_min: float | None = None,
                  step_max: float | None = None):
    budget = min(max_points or cfg.monitor.history_max_points, cfg.monitor.history_max_points)
    names = [f.strip() for f in fields.split(",") if f.strip()]
    if not names:
        raise ApiError(400, "`fields` must name at least one field", "invalid_value")
    try:
        # a JSONResponse skips FastAPI's per-element encoder (20+ ms on a few thousand points)
        return JSONResponse(feed.index.query(kind, names, budget, step_min, step_max))
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_value") from None
