"""Reads of what the run is doing now: the monitor itself, the honest status, the summary, the machine, the curriculum.

    GET /api/health      the monitor: boot id, last SSE sequence, poll interval, metric lines indexed
    GET /api/status      the honest status (a dead pid is "daemon not running") with the overfitting check
    GET /api/summary     latest train/eval records, recent eval previews, checkpoint markers
    GET /api/system      CPU/RAM/disk/GPU, latest and recent samples
    GET /api/curriculum  level per skill, accuracy history

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from monitoring import sources
from monitoring.feed import finite
from monitoring.routes.dependencies import Cfg, Feed

router = APIRouter(tags=["status"])


@router.get("/api/health")
async def health(cfg: Cfg, feed: Feed):
    return {"status": "ok", "boot": feed.boot, "seq": feed.seq, "poll_interval": cfg.monitor.poll_interval,
            "ema_smoothing": cfg.monitor.ema_smoothing, "metric_lines_indexed": feed.index.lines,
            "base_dir": str(feed.layout.base_dir)}


@router.get("/api/status")
async def status(cfg: Cfg, feed: Feed):
    return JSONResponse(finite(await asyncio.to_thread(sources.status, cfg, feed.index.summary())))


@router.get("/api/summary")
async def summary(feed: Feed):
    return JSONResponse(finite(feed.index.summary()))


@router.get("/api/system")
async def system(feed: Feed):
    return feed.system.snapshot()


@router.get("/api/curriculum")
async def curriculum(cfg: Cfg):
    return await asyncio.to_thread(sources.curriculum, cfg)
