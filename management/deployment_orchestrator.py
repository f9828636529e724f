"""Deployment orchestrator: champion -> version -> every target, verified, health-checked, promoted or rolled back.

Per target, a deployment walks these stages, each recorded in the state file
(`status/deployment_state.json`, atomic) before it starts and in the history
(`status/deployments.jsonl`, one JSON line per event) when it ends:

    copy      rsync the version's model files into `<dest>/.staging-<version>/`
    verify    manifest (blake3 per file) of the staged copy (local targets), rename to `<dest>/<version>/`
    load      POST /admin/models/load {path, version}: the server verifies, smoke-tests and flips
    health    /v1/models must report the new content; probes for deploy.health_window_seconds
              (error rate <= max_error_rate, median latency <= max_latency_seconds)
    promote   active <- new, previous <- old; remote cleanup keeps keep_remote_versions,
              never the active or previous one
    rollback  (health failed) POST /admin/models/rollback, else load the previous folder again

Crash consistency: a restart (`recover`) resumes the deployment in the state
file from its stage, asking the server what it serves rather than assuming:
a load that completed while the orchestrator was dead is detected by content
id, a rollback likewise. Each content id is deployed at most once: once it is
promoted, failed or rolled back it is never picked again (`tried_content_ids`).
Each stage is one method (STAGES); it returns the next stage, saved before
that one runs, or the target's outcome. The crash tests SIGKILL the
orchestrator at named points through an injected `DeployFaults`
(management/deploy_faults.py), built from CADENCE_DEPLOY_FAULT by the CLI below.

deployments.jsonl line: {"ts", "deploy_id", "event", "target", "version", "content_id", "checkpoint", ...}
  events: started, copied, verified, loaded, load_rejected, health_ok, health_failed, promoted,
          rolled_back, failed, resumed, cleanup, converged
deployment_state.json: {"targets": {name: {"active": {version, content_id, checkpoint, path, deployed_at} | null,
                                           "previous": {...} | null}},
                        "in_progress": {deploy_id, version, content_id, checkpoint, source, target, stage,
                                        targets_done, baseline, attempts, timings} | null}

Run as:
    cadence deploy status [--json]
    cadence deploy deploy [--checkpoint checkpoint-120] [--json]
    cadence deploy recover [--json]
    cadence deploy rollback [--target NAME] [--json]
    cadence deploy history [--json]
"""
from __future__ import annotations

import logging
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.auth import admin_token
from core.config import DeployTarget
from core.manifest import ManifestError, verify_manifest
from core.procs import InstanceLock
from management import deploy_transport as transport
from management.deploy_faults import NO_FAULTS, DeployFaults
from management.deployment_state import (  # noqa: F401 (re-exported: the orchestrator's public API)
    TERMINAL_EVENTS, active_content_id, deployed_checkpoints, deployed_versions, history, load_state, record,
    save_state, state_path, tried_content_ids)
from management.model_versioner import VERSION_RE, create_version

logger = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """A deployment that cannot go on (message says why)."""


@dataclass
class TargetRun:
    """What every stage of one target's deployment works on."""
    state: dict          # the whole deployment_state.json, saved as stages advance
    ip: dict             # state["in_progress"]
    target: DeployTarget
    tstate: dict         # state["targets"][target.name]: active and previous version
    dest: transport.Destination
    client: transport.ServerClient


# ------------------------------------------------------------------ the orchestrator
class Orchestrator:
    def __init__(self, cfg, faults: DeployFaults = NO_FAULTS):
        self.cfg = cfg
        self.faults = faults
        self.dc = cfg.deploy
        self.targets = {t.name: t for t in self.dc.targets}
        self.lock = InstanceLock(cfg.layout.status / "deployment.lock")
        self._token = None
        self._clients: dict[str, transport.ServerClient] = {}

    def client(self, target) -> transport.ServerClient:
        if target.server_url not in self._clients:
            if self._token is None:
                self._token = admin_token(self.cfg)
            keys = self.cfg.inference.api_keys
            self._clients[target.server_url] = transport.ServerClient(
                target.server_url, self._token, self.cfg.model.model_name, keys[0] if keys else None, self.dc.request_timeout)
        return self._clients[target.server_url]

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.lock.release()

    # -- entry points -------------------------------------------------------
    def deploy(self, checkpoint: str | None = None, desc: str | None = None) -> dict:
        """Deploy a checkpoint (default: the newest) to every target; finishes any interrupted deployment first."""
        self.recover()
        version = create_version(self.cfg, checkpoint, desc)
        if version["content_id"] in tried_content_ids(self.cfg):
            record(self.cfg, "skipped", None, version=version["name"], content_id=version["content_id"],
                   reason="this content was already deployed or tried")
            return {"status": "skipped", "version": version["name"], "reason": "content already deployed or tried"}
        ip = {"deploy_id": uuid.uuid4().hex[:12], "version": version["name"], "content_id": version["content_id"],
              "checkpoint": version.get("checkpoint"), "source": version["path"], "started_at": time.time(),
              "target": self.dc.targets[0].name, "stage": "copy", "targets_done": [], "attempts": 0,
              "timings": {}, "results": {}}
        state = load_state(self.cfg)
        state["in_progress"] = ip
        save_state(self.cfg, state)
        record(self.cfg, "started", ip, targets=[t.name for t in self.dc.targets])
        return self._run(state)

    def recover(self) -> dict | None:
        """Finish (or undo) a deployment interrupted by a crash, then make every target serve its active version."""
        state = load_state(self.cfg)
        result = None
        if state["in_progress"]:
            ip = state["in_progress"]
            ip["attempts"] = int(ip.get("attempts", 0)) + 1
            save_state(self.cfg, state)
            record(self.cfg, "resumed", ip, target=ip["target"], stage=ip["stage"], attempt=ip["attempts"])
            if ip["attempts"] > 3:
                self._abandon(state, ip, "interrupted more than 3 times")
            else:
                result = self._run(state)
        self.converge()
        return result

    def converge(self) -> None:
        """A reachable server serving something other than its target's active version gets the active one loaded."""
        state = load_state(self.cfg)
        for name, tstate in state["targets"].items():
            target, active = self.targets.get(name), tstate.get("active")
            if target is None or not active:
                continue
            served = self.client(target).served()
            if served is None or served.get("content_id") == active["content_id"]:
                continue
            status, body = self.client(target).load(active["path"], active["version"])
            record(self.cfg, "converged", None, target=name, version=active["version"], content_id=active["content_id"],
                   status=status, served_before=served.get("version"), error=body.get("error"))

    # -- the state machine ----------------------------------------------------
    def _run(self, state: dict) -> dict:
        ip = state["in_progress"]
        order = [t.name for t in self.dc.targets]
        while ip["target"] is not None:
            target = self.targets.get(ip["target"])
            if target is None:
                raise DeployError(f"target {ip['target']} is no longer configured")
            outcome = self._run_target(state, ip, target)
            ip["results"][target.name] = outcome
            ip["targets_done"].append(target.name)
            if outcome != "promoted" and target.name == order[0]:
                break  # the primary refused it: the others never get it
            rest = [n for n in order if n not in ip["targets_done"]]
            ip["target"], ip["stage"] = (rest[0], "copy") if rest else (None, "done")
            save_state(self.cfg, state)
        final = "promoted" if all(v == "promoted" for v in ip["results"].values()) else \
            ("partial" if "promoted" in ip["results"].values() else "failed")
        result = {"status": final, "deploy_id": ip["deploy_id"], "version": ip["version"],
                  "content_id": ip["content_id"], "targets": ip["results"], "timings": ip["timings"]}
        if final != "promoted":
            record(self.cfg, "failed", ip, targets=ip["results"], reason=ip.get("failure"))
        state["in_progress"] = None
        save_state(self.cfg, state)
        return result

    def _set_stage(self, state: dict, ip: dict, stage: str) -> None:
        ip["stage"] = stage
        save_state(self.cfg, state)

    def _timed(self, ip: dict, target, phase: str, seconds: float) -> None:
        ip["timings"].setdefault(target.name, {})[phase] = round(seconds, 3)

    def _run_target(self, state: dict, ip: dict, target) -> str:
        """Walk `target` through the stages from ip["stage"] until one returns an outcome (promoted, rolled_back,
        failed); each stage's successor is saved in the state file before it runs."""
        dest = transport.parse_destination(self.cfg, target.destination)
        tstate = state["targets"].setdefault(target.name, {"active": None, "previous": None})
        run = TargetRun(state, ip, target, tstate, dest, self.client(target))
        while True:
            stage = STAGES.get(ip["stage"])
            if stage is None:
                raise DeployError(f"unknown stage {ip['stage']}")
            step = stage(self, run)
            if step in OUTCOMES:
                return step
            self._set_stage(state, ip, step)

    def _copy(self, run: TargetRun) -> str:
        ip, target, dest = run.ip, run.target, run.dest
        t0 = time.perf_counter()
        slow = self.faults.copy_bwlimit_kb
        linked = (self.dc.link_local and dest.kind == "local" and not slow
                  and transport.same_filesystem(Path(ip["source"]), Path(dest.location)))
        ip.setdefault("linked", {})[target.name] = linked
        try:
            transport.copy_version(self.cfg, dest, Path(ip["source"]), ip["version"], self.dc.rsync_timeout,
                                   bwlimit_kb=slow, on_started=self.faults.copy_started(), link=linked)
        except transport.TransportError as exc:
            return self._fail(run.state, ip, target, f"copy failed: {exc}")
        self._timed(ip, target, "copy", time.perf_counter() - t0)
        record(self.cfg, "copied", ip, target=target.name, seconds=ip["timings"][target.name]["copy"])
        self.faults.at("after_copy")
        return "verify"

    def _verify(self, run: TargetRun) -> str:
        ip, target, dest, version = run.ip, run.target, run.dest, run.ip["version"]
        t0 = time.perf_counter()
        self.faults.at("mid_verify")
        if dest.kind == "local":
            root = Path(dest.location)
            folder = root / (transport.STAGING_PREFIX + version)
            if not folder.is_dir():
                folder = root / version
            if not folder.is_dir():
                return "copy"  # neither staged nor committed (lost with a crash): copy again
            if self.dc.verify_staging and not (ip.get("linked") or {}).get(target.name):
                try:
                    verify_manifest(folder, model_only=True)
                except ManifestError as exc:
                    transport.remove_remote(dest, folder.name)
                    return self._fail(run.state, ip, target, f"staged copy does not match its manifest: {exc}")
        try:
            transport.commit_version(dest, version, self.dc.rsync_timeout)
        except transport.TransportError as exc:
            return self._fail(run.state, ip, target, f"rename into place failed: {exc}")
        self._timed(ip, target, "verify", time.perf_counter() - t0)
        record(self.cfg, "verified", ip, target=target.name, seconds=ip["timings"][target.name]["verify"])
        served = run.client.served()
        ip["baseline"] = {"version": (served or {}).get("version"), "content_id": (served or {}).get("content_id")}
        return "load"

    def _load(self, run: TargetRun) -> str:
        ip, target, client, version = run.ip, run.target, run.client, run.ip["version"]
        client.wait_idle(self.dc.request_timeout)  # a load sent before a crash may still be running
        served = client.served()
        if served and served.get("content_id") == ip["content_id"]:
            record(self.cfg, "loaded", ip, target=target.name, note="already served (load finished while we were down)")
            return "health"
        t0 = time.perf_counter()
        path = transport.server_path(self.cfg, target, version)
        self.faults.while_sent("mid_flip", client.load, path, version)
        status, body = client.load(path, version)
        self._timed(ip, target, "load", time.perf_counter() - t0)
        if status == 0 or status >= 500 or (status == 409 and (body.get("error") or {}).get("code") == "busy"):
            # the server is down or busy: not a verdict on this version; the deployment stays in progress
            raise DeployError(f"target {target.name}: load not answered ({status} {body.get('error')}); will retry")
        if status != 200:
            err = body.get("error") or {}
            record(self.cfg, "load_rejected", ip, target=target.name, status=status, code=err.get("code"),
                   message=str(err.get("message"))[:500], still_serving=err.get("active_version"))
            if status == 422:  # the server refused this folder; what it served is untouched
                transport.remove_remote(run.dest, version)
            return self._fail(run.state, ip, target, f"server refused the load ({status} {err.get('code')})")
        ip["timings"][target.name]["server_load"] = body.get("load_seconds")
        record(self.cfg, "loaded", ip, target=target.name, seconds=ip["timings"][target.name]["load"],
               server_load_seconds=body.get("load_seconds"), previous_version=body.get("previous_version"))
        self.faults.at("after_flip")
        return "health"

    def _check_health(self, run: TargetRun) -> str:
        ip, target = run.ip, run.target
        t0 = time.perf_counter()
        ok, why, stats = self._health(run.client, ip)
        self._timed(ip, target, "health", time.perf_counter() - t0)
        if ok:
            record(self.cfg, "health_ok", ip, target=target.name, **stats)
            return "promote"
        record(self.cfg, "health_failed", ip, target=target.name, reason=why, **stats)
        ip["failure"] = why
        return "rollback"

    def _health(self, client, ip: dict) -> tuple[bool, str, dict]:
        served = client.served()
        if not served or served.get("content_id") != ip["content_id"]:
            return False, f"/v1/models reports {(served or {}).get('version')!r}, not {ip['version']}", {}
        deadline = time.monotonic() + self.dc.health_window_seconds
        latencies, errors, n = [], [], 0
        while True:
            ok, seconds, version, why = client.probe()
            n += 1
            if ok and version != ip["version"]:
                ok, why = False, f"answered by version {version}"
            if ok:
                latencies.append(seconds)
            else:
                errors.append(why)
            if time.monotonic() >= deadline:
                break
            time.sleep(self.dc.health_probe_interval)
        stats = {"probes": n, "errors": len(errors), "median_latency_s": round(statistics.median(latencies), 4) if latencies else None}
        if len(errors) / n > self.dc.max_error_rate:
            return False, f"error rate {len(errors)}/{n} > {self.dc.max_error_rate} (first: {errors[0]})", stats
        if self.dc.max_latency_seconds and latencies and statistics.median(latencies) > self.dc.max_latency_seconds:
            return False, f"median latency {statistics.median(latencies):.3f}s > {self.dc.max_latency_seconds}s", stats
        return True, "", stats

    def _promote(self, run: TargetRun) -> str:
        ip, target, tstate = run.ip, run.target, run.tstate
        active = tstate.get("active")
        if not active or active["content_id"] != ip["content_id"]:  # not yet swapped (a crash may have come after)
            tstate["previous"] = active
            tstate["active"] = {"version": ip["version"], "content_id": ip["content_id"], "checkpoint": ip.get("checkpoint"),
                                "path": transport.server_path(self.cfg, target, ip["version"]), "deployed_at": time.time()}
            save_state(self.cfg, run.state)
            record(self.cfg, "promoted", ip, target=target.name, previous=(active or {}).get("version"),
                   timings=ip["timings"].get(target.name))
        self.faults.at("after_promote")
        self.cleanup_target(target, tstate, run.dest)
        return "promoted"

    def _rollback(self, run: TargetRun) -> str:
        ip, target, tstate, client = run.ip, run.target, run.tstate, run.client
        baseline = ip.get("baseline") or {}
        served = client.served()
        if served is None:
            raise DeployError(f"target {target.name}: server unreachable during rollback (will resume)")
        client.wait_idle(self.dc.request_timeout)
        served = client.served() or served
        if served.get("content_id") != ip["content_id"]:
            outcome = "the server no longer serves it"
        else:
            self.faults.while_sent("mid_rollback", client.rollback, baseline.get("version"))
            status, body = client.rollback(baseline.get("version"))
            if status != 200 and tstate.get("active"):
                status, body = client.load(tstate["active"]["path"], tstate["active"]["version"])
            if status != 200:
                raise DeployError(f"target {target.name}: rollback failed ({status} {body.get('error')}); will retry")
            outcome = f"rolled back to {body.get('version')}"
        record(self.cfg, "rolled_back", ip, target=target.name, reason=ip.get("failure"), outcome=outcome,
               serving=(client.served() or {}).get("version"))
        transport.remove_remote(run.dest, ip["version"])
        return "rolled_back"

    def _fail(self, state, ip, target, reason: str) -> str:
        ip["failure"] = reason
        save_state(self.cfg, state)
        logger.error("deploy %s to %s failed: %s", ip["version"], target.name, reason)
        dest = transport.parse_destination(self.cfg, target.destination)
        try:
            transport.remove_remote(dest, transport.STAGING_PREFIX + ip["version"])
        except transport.TransportError as exc:
            logger.warning("could not remove staging on %s: %s", target.name, exc)
        return "failed"

    def _abandon(self, state, ip, reason: str) -> None:
        ip["failure"] = reason
        record(self.cfg, "failed", ip, reason=reason, stage=ip["stage"], target=ip["target"])
        state["in_progress"] = None
        save_state(self.cfg, state)

    def cleanup_target(self, target, tstate: dict | None = None, dest=None) -> list[str]:
        """Keep the newest keep_remote_versions version folders on the target; never the active or previous one."""
        dest = dest or transport.parse_destination(self.cfg, target.destination)
        tstate = tstate if tstate is not None else load_state(self.cfg)["targets"].get(target.name, {})
        keep = {(tstate.get(k) or {}).get("version") for k in ("active", "previous")} - {None}
        try:
            names = transport.list_remote(dest)
        except (transport.TransportError, OSError) as exc:
            logger.warning("cleanup of %s skipped: %s", target.name, exc)
            return []
        staging = [n for n in names if n.startswith(transport.STAGING_PREFIX)
                   and n[len(transport.STAGING_PREFIX):] not in keep]
        versions = sorted((n for n in names if VERSION_RE.match(n)), key=lambda n: int(VERSION_RE.match(n).group(1)))
        extra = [n for n in versions[:-self.dc.keep_remote_versions] if n not in keep] \
            if len(versions) > self.dc.keep_remote_versions else []
        removed = []
        for name in staging + extra:
            try:
                transport.remove_remote(dest, name)
                removed.append(name)
            except transport.TransportError as exc:
                logger.warning("cleanup of %s/%s failed: %s", target.name, name, exc)
        if removed:
            record(self.cfg, "cleanup", None, target=target.name, removed=removed, kept=sorted(keep))
        return removed

    def rollback(self, target_name: str | None = None) -> dict:
        """Operator rollback: the target's previous version becomes active again."""
        self.recover()
        state = load_state(self.cfg)
        name = target_name or self.dc.targets[0].name
        target, tstate = self.targets[name], state["targets"].get(name) or {}
        prev, active = tstate.get("previous"), tstate.get("active")
        if not prev:
            raise DeployError(f"target {name}: no previous version to roll back to")
        status, body = self.client(target).load(prev["path"], prev["version"])
        if status != 200:
            raise DeployError(f"target {name}: loading {prev['version']} failed ({status} {body.get('error')})")
        tstate["active"], tstate["previous"] = prev, active
        save_state(self.cfg, state)
        record(self.cfg, "rolled_back", None, target=name, version=active and active["version"],
               content_id=active and active["content_id"], outcome=f"operator rollback to {prev['version']}")
        return {"status": "rolled_back", "target": name, "active": prev["version"]}


# stage -> what it does; each returns the next stage or an outcome (OUTCOMES), and the next stage is saved before it
# runs, so a restart resumes exactly there
STAGES = {
    "copy": Orchestrator._copy,            # rsync (or hard links) into .staging-<version>/; after a crash, again
    "verify": Orchestrator._verify,        # manifest of the staged copy, rename into place; staging lost: copy
    "load": Orchestrator._load,            # POST /admin/models/load, unless the server already serves the content
    "health": Orchestrator._check_health,  # /v1/models and probes over the health window
    "promote": Orchestrator._promote,      # active <- new in the state file, then remote cleanup
    "rollback": Orchestrator._rollback,    # health failed: the server goes back to the baseline
}
OUTCOMES = frozenset({"promoted", "rolled_back", "failed"})
