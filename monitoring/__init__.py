"""Cadence monitor: one FastAPI server with the JSON API, a live SSE feed, token-protected controls and the
operator's web page (see monitoring/app.py for the endpoints).

Run as:
    cadence monitor [--config config.json] [--set monitor.port=8080]
"""
