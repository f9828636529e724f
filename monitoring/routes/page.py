"""The operator's web page: index.html, its static files, and the chart library from node_modules.

    GET /                        static/index.html
    GET /static/...              static/ (app.js, styles)
    GET /vendor/uplot/{name}     uPlot.iife.min.js or uPlot.min.css from node_modules/uplot/dist (npm ci, pinned)

Library only; composed by monitoring/app.py (`router` and `mount_static`).
"""
from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from core.config import REPO_ROOT
from monitoring.protocol import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
UPLOT_DIST = "uplot/dist"
UPLOT_FILES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}

router = APIRouter(include_in_schema=False)


def node_modules_dir() -> Path:
    """Where scripts/setup.sh ran `npm ci` (the repo root); CADENCE_NODE_MODULES overrides."""
    return Path(os.environ.get("CADENCE_NODE_MODULES") or REPO_ROOT / "node_modules")


@router.get("/")
async def index():
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/vendor/uplot/{name}")
async def uplot(name: str):
    if name not in UPLOT_FILES:
        raise ApiError(404, f"{name}: not served", "not_found")
    path = node_modules_dir() / UPLOT_DIST / name
    if not path.is_file():
        raise ApiError(404, "chart library not installed: run scripts/setup.sh on a machine with npm "
                            "(it runs `npm ci`, installing the pinned uplot into node_modules/)", "chart_library_missing")
    return FileResponse(path, media_type=UPLOT_FILES[name], headers={"Cache-Control": "max-age=3600"})


def mount_static(app: FastAPI) -> None:
    """/static (a mount is the app's, not a router's: FastAPI's include_router does not carry mounts)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
