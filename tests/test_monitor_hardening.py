"""The monitor behind the shared HTTP guard, on a live server: DNS-rebinding Host refused, JSON-only POSTs, body limit,
client mistakes that were 500s now 400s, a 500 that closes its connection, half-open connections closed."""
from __future__ import annotations

import os
import socket

import httpx
import pytest

from monitoring import sources


@pytest.fixture(scope="module")
def monitor(tmp_path_factory, micro_model_dir):
    from core.auth import admin_token
    from core.config import from_dict
    from monitoring.app import create_app
    from monitoring.demo import write_run
    from tests.monitor_support import serve

    base = tmp_path_factory.mktemp("monitor-hardening")
    cfg = from_dict({"paths": {"base_dir": str(base)}, "model": {"base_model": str(micro_model_dir)},
                     "monitor": {"allowed_hosts": ["cadence.lan"], "read_timeout": 1.5, "max_body_bytes": 65536}},
                    base)
    write_run(cfg, steps=300, live_pid=os.getpid())
    with serve(create_app(cfg)) as url:
        yield url, {"Authorization": f"Bearer {admin_token(cfg)}"}, cfg


def test_dns_rebinding_host_refused(monitor):
    url, _, _ = monitor
    port = url.rsplit(":", 1)[1]
    for path in ("/api/status", "/api/queue", "/api/queue/syllo_L2.jsonl", "/api/stream", "/"):
        r = httpx.get(url + path, headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", (path, r.text)
        assert set(r.json()["error"]) == {"message", "code"}
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "cadence.lan", f"cadence.lan:{port}"):
        assert httpx.get(url + "/api/status", headers={"Host": host}, timeout=10).status_code == 200, host


def test_posts_need_json_and_the_upload_its_own_types(monitor):
    url, auth, cfg = monitor
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(url + "/api/control/pause", content=b'{"reason": "x"}', headers={**auth, "Content-Type": ctype},
                       timeout=10)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (ctype, r.text)
    r = httpx.post(url + "/api/control/pause", content=b'{"reason": "x"}', headers=auth, timeout=10)
    assert r.status_code == 415  # a body without a Content-Type
    assert httpx.post(url + "/api/control/resume", headers=auth, timeout=10).status_code == 200  # no body: fine
    good = b'{"text": "hello"}\n'
    r = httpx.post(url + "/api/upload", params={"filename": "t.jsonl"}, content=good, timeout=10,
                   headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/octet-stream" in r.json()["error"]["message"]
    r = httpx.post(url + "/api/upload", params={"filename": "t.jsonl"}, content=good, timeout=10,
                   headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    # the upload's own (larger) limit applies to it, the JSON limit to everything else
    r = httpx.post(url + "/api/upload", params={"filename": "big.jsonl"}, content=good * 8000, timeout=30,
                   headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    r = httpx.post(url + "/api/control/pause", json={"reason": "x" * 70_000}, headers=auth, timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_former_500s_are_400s(monitor):
    url, auth, _ = monitor
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/control/pause", "/api/queue/syllo_L2.jsonl/priority"):
        r = httpx.post(url + path, content=deep[:60_000], headers={**auth, "Content-Type": "application/json"},
                       timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", (path, r.text)
    for name in ("q" * 5000, "a%00b", "x%0Ay"):
        r = httpx.get(url + f"/api/queue/{name}", timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name", (name[:20], r.text)
    assert httpx.get(url + "/api/queue/no-such-file.jsonl", timeout=10).status_code == 404
    r = httpx.post(url + "/api/control/pause", content=b'{"reason": "\xff\xfe"}', timeout=10,
                   headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_a_500_closes_its_connection_cleanly(monitor, monkeypatch):
    url, _, _ = monitor

    def boom(cfg):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(sources, "curriculum", boom)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/api/health").status_code == 200
        r = client.get("/api/curriculum")
        assert r.status_code == 500 and r.headers["connection"] == "close"
        assert r.json()["error"]["code"] == "internal_error"
        assert client.get("/api/health").status_code == 200


def test_half_open_connection_closed(monitor):
    url, _, _ = monitor
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    s = socket.create_connection((host, port))
    s.settimeout(30)  # a hang guard; read_timeout is 1.5 s
    s.sendall(b"GET /api/status HTTP/1.1\r\n")
    try:
        assert s.recv(1024) == b""
    except ConnectionResetError:
        pass
    finally:
        s.close()
