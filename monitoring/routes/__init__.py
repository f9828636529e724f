"""The monitor's HTTP routes, one APIRouter per resource; monitoring/app.py includes them in this order.

    status    /api/health, /api/status, /api/summary, /api/system, /api/curriculum
    metrics   /api/metrics
    models    /api/checkpoints, /api/deployments, /api/inference
    events    /api/events, /api/stream (SSE)
    queue     /api/queue, /api/queue/{name} (+ priority, retry, DELETE: token)
    upload    /api/upload (token)
    control   /api/auth, /api/control/{action} (token)
    page      /, /vendor/uplot/{name} (and the /static mount)

Request bodies are the typed models of monitoring/protocol.py; the routes take
the config, the live feed and the admin-token check as dependencies
(monitoring/routes/dependencies.py).
"""
from __future__ import annotations

from monitoring.routes import control, events, metrics, models, page, queue, status, upload

ROUTERS = (status.router, metrics.router, models.router, events.router, queue.router, upload.router, control.router,
           page.router)
