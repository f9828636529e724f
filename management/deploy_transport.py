"""Moving a version to a target and talking to the target's inference server.

Destinations: `/local/path`, `host:/path` (rsync over ssh) and
`rsync://host[:port]/module/path` (an rsync daemon). rsync always runs as an
argument list with a timeout (`--timeout` for stalls, and a hard wall-clock
limit on the process), copies model files only (`--exclude=/training_state/`)
and dies with its parent (PR_SET_PDEATHSIG), so a killed orchestrator never
leaves a copy running behind it.

Staging: local and ssh targets receive `<dest>/.staging-<version>/`, renamed to
`<dest>/<version>/` when complete; an rsync daemon cannot rename, so there
rsync's own `--delay-updates` staging (`.~tmp~`, every file moved into place
at the end) is used and the server's manifest check is the gate.

Library only; used by management/deployment_orchestrator.py.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.procs import set_parent_death_signal

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
SSH_RE = re.compile(r"^(?P<host>[A-Za-z0-9_.@-]+):(?P<path>/.*)$")


class TransportError(RuntimeError):
    """A copy, rename, listing or delete on a target failed (message says which and why)."""


@dataclass(frozen=True)
class Destination:
    kind: str          # local | ssh | rsyncd
    location: str      # absolute local path, host, or rsync://host[:port]/module/path (no trailing slash)
    path: str = ""     # remote path for ssh

    def url(self, name: str = "") -> str:
        """rsync address of `<dest>/<name>` (the folder itself when name is empty)."""
        if self.kind == "local":
            return str(Path(self.location) / name) if name else self.location
        if self.kind == "ssh":
            return f"{self.location}:{self.path.rstrip('/')}/{name}" if name else f"{self.location}:{self.path}"
        return f"{self.location}/{name}" if name else self.location


def parse_destination(cfg, destination: str) -> Destination:
    if destination.startswith("rsync://"):
        return Destination("rsyncd", destination.rstrip("/"))
    m = SSH_RE.match(destination)
    if m and not os.path.isabs(destination):
        return Destination("ssh", m.group("host"), m.group("path"))
    return Destination("local", str(cfg.resolve(destination)))


def server_path(cfg, target, version: str) -> str:
    """The folder the target server loads, as that server sees it."""
    if target.server_path:
        return str(Path(target.server_path) / version)
    dest = parse_destination(cfg, target.destination)
    if dest.kind != "local":
        raise TransportError(f"target {target.name}: set server_path for a {dest.kind} destination")
    return str(Path(dest.location) / version)


def rsync_available() -> bool:
    return shutil.which("rsync") is not None


def _run(cmd: list[str], timeout: float, slow_for_fault: bool = False) -> None:
    logger.debug("run %s", cmd)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TransportError(f"{cmd[0]} timed out after {timeout:.0f}s: {' '.join(cmd[-2:])}") from None
    if proc.returncode != 0:
        raise TransportError(f"{cmd[0]} exited {proc.returncode}: {err.decode(errors='replace').strip()[-800:]}")


def rsync_cmd(src: str, dst: str, timeout: float, extra: list[str] | None = None) -> list[str]:
    return ["rsync", "-a", "--delete", "--exclude=/training_state/", f"--timeout={max(1, int(timeout))}",
            *(extra or []), src, dst]


def same_filesystem(a: Path, b: Path) -> bool:
    try:
        b.mkdir(parents=True, exist_ok=True)
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def copy_version(cfg, dest: Destination, src: Path, version: str, timeout: float, bwlimit_kb: int | None = None,
                 on_started=None, link: bool = False) -> str:
    """Copy model files of `src` to the target's staging area; returns the staged location (as rsync sees it).

    link: a local destination gets hard links to `src`'s files (rsync --link-dest) instead of byte copies.
    """
    extra = [f"--bwlimit={bwlimit_kb}"] if bwlimit_kb else []
    if link and dest.kind == "local":
        extra.append(f"--link-dest={Path(src).resolve()}")
    src_arg = str(src).rstrip("/") + "/"
    if dest.kind == "rsyncd":
        staged = dest.url(version)
        extra += ["--delay-updates"]
    else:
        staged = dest.url(STAGING_PREFIX + version)
    if dest.kind == "local":
        Path(dest.location).mkdir(parents=True, exist_ok=True)
        if not rsync_available():
            logger.warning("rsync not installed: copying %s with shutil", src)
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(src, staged, ignore=shutil.ignore_patterns("training_state"))
            return staged
    elif dest.kind == "ssh":
        extra += ["-e", "ssh -o BatchMode=yes"]
        _run(["ssh", "-o", "BatchMode=yes", dest.location, "mkdir", "-p", shlex.quote(dest.path)], timeout)
    elif dest.kind == "rsyncd":
        _ensure_rsyncd_dir(dest, timeout)
    if on_started:
        on_started()
    _run(rsync_cmd(src_arg, staged.rstrip("/") + "/", timeout, extra), timeout + 30)
    return staged


def _ensure_rsyncd_dir(dest: Destination, timeout: float) -> None:
    """Create the destination's folders below the module (an rsync daemon creates only the last component)."""
    m = re.match(r"^(rsync://[^/]+/[^/]+)(/.*)?$", dest.location)
    if not m or not m.group(2):
        return
    with tempfile.TemporaryDirectory() as empty:
        url = m.group(1)
        for part in [p for p in m.group(2).split("/") if p]:
            url = f"{url}/{part}"
            _run(["rsync", "-r", "--exclude=*", f"--timeout={max(1, int(timeout))}", empty + "/", url + "/"], timeout)


def commit_version(dest: Destination, version: str, timeout: float) -> None:
    """Rename `.staging-<version>` to `<version>` on the target (a no-op for rsync daemons)."""
    if dest.kind == "local":
        staged, final = Path(dest.location) / (STAGING_PREFIX + version), Path(dest.location) / version
        if staged.is_dir():
            if final.exists():
                shutil.rmtree(final)
            os.rename(staged, final)
        elif not final.is_dir():
            raise TransportError(f"{staged}: nothing staged")
    elif dest.kind == "ssh":
        staged, final = f"{dest.path}/{STAGING_PREFIX}{version}", f"{dest.path}/{version}"
        script = f"if [ -d {shlex.quote(staged)} ]; then rm -rf {shlex.quote(final)} && mv {shlex.quote(staged)} {shlex.quote(final)}; fi"
        _run(["ssh", "-o", "BatchMode=yes", dest.location, script], timeout)


def list_remote(dest: Destination, timeout: float = 60) -> list[str]:
    """Names of the folders at the target (staging ones included)."""
    if dest.kind == "local":
        root = Path(dest.location)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    cmd = ["rsync", "--list-only", f"--timeout={int(timeout)}"]
    if dest.kind == "ssh":
        cmd += ["-e", "ssh -o BatchMode=yes"]
    proc = subprocess.run([*cmd, dest.url().rstrip("/") + "/"], capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise TransportError(f"listing {dest.url()} failed: {proc.stderr.decode(errors='replace').strip()[-400:]}")
    names = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].startswith("d") and parts[4] not in (".", ".."):
            names.append(parts[4])
    return sorted(names)


def remove_remote(dest: Destination, name: str, timeout: float = 120) -> None:
    """Delete folder `name` at the target."""
    if not name or "/" in name or name in (".", ".."):
        raise TransportError(f"refusing to delete {name!r}")
    if dest.kind == "local":
        path = Path(dest.location) / name
        if path.exists():
            trash = path.with_name(f".trash-{name}-{os.getpid()}")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return
    if dest.kind == "ssh":
        _run(["ssh", "-o", "BatchMode=yes", dest.location, "rm", "-rf", shlex.quote(f"{dest.path}/{name}")], timeout)
        return
    with tempfile.TemporaryDirectory() as empty:  # an empty source with --delete, filtered to that one folder
        _run(["rsync", "-r", "--delete", f"--include=/{name}/***", "--exclude=*", f"--timeout={int(timeout)}",
              empty + "/", dest.url().rstrip("/") + "/"], timeout)


# ------------------------------------------------------------------ the target's inference server
class ServerClient:
    """The admin and OpenAI endpoints of one inference server."""

    def __init__(self, url: str, admin_token: str, model_name: str, api_key: str | None = None, timeout: float = 600):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.admin_headers = {"Authorization": f"Bearer {admin_token}"}
        self.api_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.http = httpx.Client(timeout=timeout)  # one connection pool: no TLS context or handshake per request

    def close(self) -> None:
        self.http.close()

    def served(self) -> dict | None:
        """The active model entry of /v1/models (version, content_id, global_step), or None when unreachable."""
        try:
            r = self.http.get(self.url + "/v1/models", headers=self.api_headers, timeout=10)
            r.raise_for_status()
            data = r.json().get("data") or []
            return data[0] if data else {}
        except (httpx.HTTPError, ValueError):
            return None

    def loading(self) -> dict | None:
        """What the server is loading right now (GET /admin/models), or None."""
        try:
            r = self.http.get(self.url + "/admin/models", headers=self.admin_headers, timeout=10)
            return r.json().get("loading") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_idle(self, timeout: float) -> None:
        """Wait while the server is loading something (e.g. a load we sent before a crash)."""
        deadline = time.monotonic() + timeout
        while self.loading() and time.monotonic() < deadline:
            time.sleep(0.2)

    def load(self, path: str, version: str) -> tuple[int, dict]:
        return self._admin("/admin/models/load", {"path": path, "version": version})

    def rollback(self, version: str | None = None) -> tuple[int, dict]:
        return self._admin("/admin/models/rollback", {"version": version} if version else {})

    def _admin(self, route: str, body: dict) -> tuple[int, dict]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                r = self.http.post(self.url + route, json=body, headers=self.admin_headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                return 0, {"error": {"code": "unreachable", "message": f"{type(exc).__name__}: {exc}"}}
            try:
                payload = r.json()
            except ValueError:
                payload = {"error": {"code": "bad_response", "message": r.text[:300]}}
            busy = r.status_code == 409 and (payload.get("error") or {}).get("code") == "busy"
            if busy and time.monotonic() < deadline:
                time.sleep(0.2)  # another load (perhaps ours, sent before a crash) is running: wait for it
                continue
            return r.status_code, payload

    def probe(self, max_tokens: int = 2) -> tuple[bool, float, str | None, str]:
        """One small chat request: (ok, seconds, version header, why-not)."""
        body = {"model": self.model_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": max_tokens,
                "temperature": 0}
        t0 = time.perf_counter()
        try:
            r = self.http.post(self.url + "/v1/chat/completions", json=body, headers=self.api_headers, timeout=60)
        except httpx.HTTPError as exc:
            return False, time.perf_counter() - t0, None, f"{type(exc).__name__}: {exc}"
        dt = time.perf_counter() - t0
        version = r.headers.get("x-model-version")
        try:
            payload = r.json()
        except ValueError:
            return False, dt, version, f"HTTP {r.status_code}: not JSON"
        if r.status_code != 200 or "error" in payload or not payload.get("choices"):
            return False, dt, version, f"HTTP {r.status_code}: {str(payload.get('error') or payload)[:200]}"
        return True, dt, version, ""
