"""Reads about models: checkpoints with their ranking, the deployment history, what box B serves.

    GET /api/checkpoints           on disk, joined with the ranking ledger; champion and deployed marked
    GET /api/deployments?limit=100 status/deployments.jsonl, newest first (tail read)
    GET /api/inference             box B: /v1/models and /metrics, or why it does not answer

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from monitoring import sources
from monitoring.routes.dependencies import Cfg, Http

router = APIRouter(tags=["models"])


@router.get("/api/checkpoints")
async def checkpoints(cfg: Cfg):
    return await asyncio.to_thread(sources.checkpoints, cfg)


@router.get("/api/deployments")
async def deployments(cfg: Cfg, limit: int = Query(100, ge=1, le=1000)):
    return await asyncio.to_thread(sources.deployments, cfg, limit)


@router.get("/api/inference")
async def inference(cfg: Cfg, http: Http):
    return await sources.inference_state(cfg, http)
