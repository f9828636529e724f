"""Start, stop and inspect Cadence's processes by recorded pid (the engine behind start_all/stop_all/status.sh).

Box A: the watchdog (which starts and keeps the training daemon alive), the
monitor, the model lifecycle worker (comparison + deployment) and the built-in
skill servers. Single-machine mode (the default) also starts box B's inference
server. Every process gets a pid file in .pids/ and a log in logs/; starting
is idempotent (a live pid is never started twice); stopping is graceful
(SIGTERM, wait) and then forced.

Run as:
    cadence start [--no-inference] [--only NAME ...]
    cadence stop [--timeout 60]
    cadence status [--json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from core.config import CadenceConfig
from core.procs import live_pid, remove_pid, terminate, write_pid


def shifted_config(offset: int, **safety) -> dict:
    """The repo's config.json with every port (inference, monitor, the local deploy target, the two built-in
    skill servers) moved by `offset`, so a second Cadence (a test, a benchmark) runs beside a live one;
    `safety` keys are overridden as given."""
    cfg = json.loads((REPO / "config.json").read_text())
    cfg.setdefault("inference", {})["port"] = 8765 + offset
    cfg.setdefault("monitor", {})["port"] = 8080 + offset
    cfg.setdefault("deploy", {})["targets"] = [{"name": "local", "destination": "models/deployed",
                                               "server_url": f"http://127.0.0.1:{8765 + offset}"}]
    cfg.setdefault("data_manager", {})["skills"] = [{"name": "binary", "url": f"http://127.0.0.1:{8090 + offset}"},
                                                    {"name": "syllo", "url": f"http://127.0.0.1:{8091 + offset}"}]
    cfg.setdefault("safety", {}).update(safety)
    return cfg


def service_table(cfg: CadenceConfig, config_args: list[str], inference: bool = True) -> list[dict]:
    py = sys.executable
    out = [{"name": "watchdog", "cmd": [py, str(REPO / "safety" / "daemon_watchdog.py"), *config_args],
            "pid": "watchdog", "box": "A"}]
    out.append({"name": "monitor", "cmd": [py, "-m", "monitoring", *config_args], "pid": "monitor", "box": "A"})
    out.append({"name": "lifecycle", "cmd": [py, "-m", "management", *config_args], "pid": "lifecycle", "box": "A"})
    if cfg.data_manager.enabled:
        for skill in cfg.data_manager.skills:
            if skill.builtin:
                port = skill.url.rstrip("/").rsplit(":", 1)[-1]
                out.append({"name": f"skill-{skill.name}", "cmd": [py, "-m", "data_manager.skills", skill.name, "--port", port],
                            "pid": f"skill-{skill.name}", "box": "A"})
    if inference:
        out.append({"name": "inference", "cmd": [py, "-m", "inference", *config_args], "pid": "inference", "box": "B"})
    return out


def start(cfg: CadenceConfig, services: list[dict]) -> list[dict]:
    layout = cfg.layout.ensure()
    report = []
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), TOKENIZERS_PARALLELISM="false")
    for svc in services:
        pid_file = layout.pid_file(svc["pid"])
        pid = live_pid(pid_file)
        if pid:
            report.append({"name": svc["name"], "pid": pid, "action": "already running"})
            continue
        log = open(layout.logs / f"{svc['name']}.log", "ab")
        proc = subprocess.Popen(svc["cmd"], cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        if not pid_file.exists() or live_pid(pid_file) is None:
            write_pid(pid_file, proc.pid)  # services that write their own pid file rewrite the same value
        report.append({"name": svc["name"], "pid": proc.pid, "action": "started"})
    time.sleep(1.0)
    for r in report:
        if r["action"] == "started" and live_pid(layout.pid_file(_pid_name(services, r["name"]))) is None:
            r["action"] = "exited at once (see logs/%s.log)" % r["name"]
    return report


def _pid_name(services: list[dict], name: str) -> str:
    return next(s["pid"] for s in services if s["name"] == name)


def stop(cfg: CadenceConfig, timeout: float) -> list[dict]:
    """Watchdog first (so nothing is restarted), then the daemon (checkpoint + requeue), then the rest."""
    layout = cfg.layout
    order = ["watchdog", "daemon", "lifecycle", "monitor", "inference"]
    names = order + sorted(p.stem for p in layout.pids.glob("*.pid") if p.stem not in order and p.stem != "trainer")
    report = []
    for name in names:
        pid_file = layout.pid_file(name)
        pid = live_pid(pid_file)
        if pid is None:
            if pid_file.exists():
                pid_file.unlink(missing_ok=True)
                report.append({"name": name, "action": "stale pid file removed"})
            continue
        wait = cfg.daemon.shutdown_timeout if name == "daemon" else timeout
        outcome = terminate(pid, wait)
        remove_pid(pid_file, pid)
        report.append({"name": name, "pid": pid, "action": outcome})
    orphan = live_pid(layout.pid_file("trainer"))
    if orphan:
        report.append({"name": "trainer", "pid": orphan, "action": terminate(orphan, cfg.daemon.shutdown_timeout)})
    return report


def status(cfg: CadenceConfig) -> list[dict]:
    layout = cfg.layout
    rows = []
    for p in sorted(layout.pids.glob("*.pid")):
        pid = live_pid(p)
        rows.append({"name": p.stem, "pid": pid, "alive": pid is not None})
    return rows
