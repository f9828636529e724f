"""Issue 14 items 1-6 on live servers: version labels, manifest coverage, batch-only NaN, body/time limits, Host and
Content-Type checks, load-path policy, a 500 that closes its connection cleanly."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.manifest import ManifestError, build_manifest, content_id, write_manifest
from core.version_label import InvalidLabel, check_label
from tests.inference_support import ADMIN_TOKEN, LiveServer, make_version, sse_events
from tests.test_inference_api import _config

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_model_dir):
    cfg = _config(tmp_path_factory, micro_model_dir, read_timeout=1.5, allowed_hosts=["boxb.lan"])
    with LiveServer(cfg) as srv:
        yield srv


def _active(server) -> str:
    return httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["version"]


def _load(server, path, version=None) -> httpx.Response:
    body = {"path": str(path), **({"version": version} if version is not None else {})}
    return httpx.post(server.url + "/admin/models/load", json=body, headers=ADMIN, timeout=120)


# ---- 1. version labels -----------------------------------------------------------------------------
VALID = ["base", "v001_20261201_step120", "checkpoint-120", "v2.1+cpu", "A" * 128]
INVALID = {"v-日本": "'日'", "v4–final": "'–'", "a\r\nX-Evil: 1": "'\\r'", "../etc": "'.'", "": "empty",
           "a/b": "'/'", "m@v1": "'@'", "-v1": "'-'", "A" * 129: "129 characters", "v 1": "' '", "v1\x00": "'\\x00'"}


def test_label_format_is_one_rule():
    for label in VALID:
        assert check_label(label) == label
    for label, why in INVALID.items():
        with pytest.raises(InvalidLabel, match=re.escape(why)):
            check_label(label, "`version`")
    with pytest.raises(InvalidLabel, match="must be a string"):
        check_label(5)


def test_hostile_labels_refused_before_any_state_changes(server, micro_model_dir, tmp_path):
    good = make_version(micro_model_dir, tmp_path / "good", "good", global_step=1, seed=1)
    assert _load(server, good, "good").status_code == 200
    history = len(server.admin("GET", "/admin/models").json()["history"])
    for label in INVALID:
        r = _load(server, good, label)
        assert r.status_code == 400, (label, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_version" and err["param"] == "version", err
    # a manifest's `version` with an en dash, a folder named in Cyrillic when no label is given
    dashed = make_version(micro_model_dir, tmp_path / "dashed", "v4–final", global_step=2, seed=2)
    r = _load(server, dashed)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_version"
    assert "manifest.json `version`" in r.json()["error"]["message"]
    cyr = make_version(micro_model_dir, tmp_path / "модель-v4", "ignored", global_step=3, seed=3, manifest=False)
    write_manifest(cyr, model_only=True, global_step=3)  # no version in the manifest: the folder name is the label
    r = _load(server, cyr)
    assert r.status_code == 400 and "folder name" in r.json()["error"]["message"]
    # nothing changed: the same version serves; the admin API's refusals never reached the registry, the two labels
    # found inside the folders are recorded as rejected load attempts; every /v1 response is still fine
    new = server.admin("GET", "/admin/models").json()["history"][history:]
    assert [(h["status"], h["code"]) for h in new] == [("rejected", "invalid_version")] * 2
    assert _active(server) == "good"
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert r.status_code == 200 and r.headers["x-model-version"] == "good"
    # the same folder with a valid label loads: the label was the only problem
    assert _load(server, cyr, "model-v4").status_code == 200 and _active(server) == "model-v4"
    rb = server.admin("POST", "/admin/models/rollback", {"version": "v-日本"})
    assert rb.status_code == 400 and rb.json()["error"]["code"] == "invalid_version"


# ---- 2. manifests must cover the folder -------------------------------------------------------------
def test_content_id_of_empty_or_partial_manifest_is_refused(micro_model_dir):
    with pytest.raises(ManifestError, match="lists no model files"):
        content_id({"format": 1, "files": {}})
    full = build_manifest(micro_model_dir, model_only=True)
    no_weights = {**full, "files": {k: v for k, v in full["files"].items() if k != "model.safetensors"}}
    with pytest.raises(ManifestError, match="no weights"):
        content_id(no_weights)
    no_config = {**full, "files": {k: v for k, v in full["files"].items() if k != "config.json"}}
    with pytest.raises(ManifestError, match="no config.json"):
        content_id(no_config)
    assert len(content_id(full)) == 64


def _edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


PARTIAL = {
    "empty_files": (lambda d: _edit_manifest(d, lambda m: m.update(files={})), "lists no model files"),
    "no_weights_entry": (lambda d: _edit_manifest(d, lambda m: m["files"].pop("model.safetensors")),
                         "model.safetensors: in the folder but not in the manifest"),
    "no_tokenizer_entry": (lambda d: _edit_manifest(d, lambda m: m["files"].pop("tokenizer.json")),
                           "tokenizer.json: in the folder but not in the manifest"),
    "unlisted_chat_template": (lambda d: (d / "chat_template.json").write_text('{"chat_template": "{{ 1 }}"}'),
                               "chat_template.json: in the folder but not in the manifest"),
    "unlisted_added_tokens": (lambda d: (d / "added_tokens.json").write_text('{"<evil>": 5}'),
                              "added_tokens.json: in the folder but not in the manifest"),
    "unlisted_shard": (lambda d: shutil.copy(d / "model.safetensors", d / "model-00002-of-00002.safetensors"),
                       "model-00002-of-00002.safetensors: in the folder but not in the manifest"),
}


@pytest.mark.parametrize("kind", sorted(PARTIAL))
def test_partial_manifest_refused(server, micro_model_dir, tmp_path, kind):
    before = _active(server)
    folder = make_version(micro_model_dir, tmp_path / kind, kind, global_step=5, seed=5)
    break_it, why = PARTIAL[kind]
    break_it(folder)
    r = _load(server, folder, kind)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "manifest_incomplete" and why in err["message"], err
    assert err["active_version"] == before == _active(server)


def test_manifest_path_outside_folder_never_read(server, micro_model_dir, tmp_path):
    folder = make_version(micro_model_dir, tmp_path / "escape", "escape", global_step=6, seed=6)
    _edit_manifest(folder, lambda m: m["files"].update({"../../etc/passwd": {"blake3": "0" * 64, "size": 1}}))
    r = _load(server, folder, "escape")
    assert r.status_code == 422 and "not a relative path inside the folder" in r.json()["error"]["message"]


# ---- 3. batch-only NaN -------------------------------------------------------------------------------
def make_batch_nan_model(src: Path, dst: Path) -> Path:
    """Finite on any single prompt, NaN once prompts are left-padded together: the pad id (0, what the engine pads
    with) has a zero embedding and RMSNorm has eps 0, so every pad position is 0/0 and poisons its row."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    name = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[name][0].zero_()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["rms_norm_eps"] = 0.0
    (dst / "config.json").write_text(json.dumps(config))
    write_manifest(dst, model_only=True, version="batchnan", global_step=7)
    return dst


def _nan_engine(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.engine import ModelEngine

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return ModelEngine(model, AutoTokenizer.from_pretrained(folder), "batchnan", str(folder), 7, 1024)


def test_batch_only_nan_model_fails_the_batch_smoke_test(server, micro_model_dir, tmp_path):
    from inference.engine import NonFiniteLogits

    folder = make_batch_nan_model(micro_model_dir, tmp_path / "batchnan")
    engine = _nan_engine(folder)
    ids, _ = engine.generate_sync(engine.chat_prompt_ids([{"role": "user", "content": "Say hello."}]), 8)
    assert len(ids) > 0  # alone it is finite: the old single-prompt smoke test passed it
    with pytest.raises(NonFiniteLogits):
        engine.generate_sync([0, 5, 6], 2)  # a pad id inside the prompt is what a padded row sees
    before = _active(server)
    r = _load(server, folder, "batchnan")
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "smoke_failed" and "batch of 4 prompts" in err["message"] and "NaN/Inf" in err["message"]
    assert _active(server) == before


def test_nonfinite_row_fails_only_its_request(server, micro_model_dir, tmp_path):
    """A batch-only-NaN engine put in service directly (bypassing the loader): the rows padded in a mixed prefill
    fail with their own error, the longest row of that prefill and the row already running finish normally."""
    folder = make_batch_nan_model(micro_model_dir, tmp_path / "batchnan-serve")
    engine = _nan_engine(folder)
    gate, entered = threading.Event(), threading.Event()
    prefill = engine.prefill

    def gated_prefill(seqs):  # hold the first prefill until the next three requests are all waiting
        if not entered.is_set():
            entered.set()
            gate.wait(60)
        return prefill(seqs)

    engine.prefill = gated_prefill
    scheduler = server.state.scheduler
    scheduler.flip(engine)
    results: dict[int, httpx.Response] = {}

    def ask(n: int, tokens: int):
        body = {"model": "cadence-tiny", "prompt": list(range(5, 5 + n)), "max_tokens": tokens, "temperature": 0.0,
                "ignore_eos": True}
        results[n] = httpx.post(server.url + "/v1/completions", json=body, timeout=60)

    try:
        first = threading.Thread(target=ask, args=(3, 12))
        first.start()
        assert entered.wait(30)
        others = [threading.Thread(target=ask, args=(n, 6)) for n in (5, 9, 14)]
        for t in others:
            t.start()
        deadline = time.monotonic() + 30
        while scheduler.waiting < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.waiting == 3
        gate.set()
        for t in [first, *others]:
            t.join(60)
    finally:
        gate.set()
        # the previous engine was retired (and freed) by the flip: serve a fresh good version through the registry
        fresh = make_version(micro_model_dir, tmp_path / "after-nan", "after-nan", global_step=9, seed=9)
        assert _load(server, fresh, "after-nan").status_code == 200
    assert results[3].status_code == 200 and results[3].json()["usage"]["completion_tokens"] == 12
    assert results[14].status_code == 200 and results[14].json()["usage"]["completion_tokens"] == 6
    for n in (5, 9):  # padded next to the 14-token prompt
        r = results[n]
        assert r.status_code == 500 and r.headers["connection"] == "close", r.text
        err = r.json()["error"]
        assert err["code"] == "generation_failed" and "NaN/Inf logits for this request" in err["message"]
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200


# ---- 4. limits ---------------------------------------------------------------------------------------
def _recv_response(sock: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            block = sock.recv(65536)
            if not block:
                return data
            data += block
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            block = sock.recv(65536)
            if not block:
                break
            body += block
        return head + b"\r\n\r\n" + body
    except (ConnectionResetError, socket.timeout):
        return data


def _post_big(port: int, total: int, chunked: bool) -> bytes:
    """POST `total` bytes of body to /v1/chat/completions over a raw socket; the server's response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"))
    sock.sendall(head.encode())
    if not chunked:  # the limit is judged on the declared length: the answer comes before any body byte is sent
        response = _recv_response(sock)
        sock.close()
        return response
    block = b"a" * 65536
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    done = threading.Event()

    def send():
        sent = 0
        try:
            while sent < total and not done.is_set():
                sock.sendall(frame)
                sent += len(block)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: it stopped reading
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    response = _recv_response(sock)
    done.set()
    sender.join(60)
    sock.close()
    return response


def test_50mb_body_refused_while_a_stream_keeps_flowing(server):
    rss = psutil.Process().memory_info().rss
    body = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "count"}], "max_tokens": 200,
            "temperature": 0.0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    stream: dict = {}

    def run_stream():
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
            stream["status"] = r.status_code
            stream["events"] = sse_events(r.iter_lines())

    t = threading.Thread(target=run_stream)
    t.start()
    responses = [_post_big(server.port, 50 << 20, chunked=False), _post_big(server.port, 50 << 20, chunked=True)]
    health = httpx.get(server.url + "/health", timeout=30)
    t.join(120)
    for raw in responses:
        assert raw.startswith(b"HTTP/1.1 413"), raw[:300]
        assert b"connection: close" in raw.lower()
        err = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
        assert err["code"] == "body_too_large" and str(server.cfg.inference.max_body_bytes) in err["message"]
    assert health.status_code == 200
    assert stream["status"] == 200 and stream["events"][-1] == "[DONE]"
    assert next(e["usage"] for e in stream["events"] if isinstance(e, dict) and e.get("usage"))["completion_tokens"] == 200
    assert psutil.Process().memory_info().rss - rss < 200 << 20


def test_prompt_longer_than_any_context_refused_without_tokenising(server):
    chars = 3 << 20  # under the body limit; far over max_context * the longest token
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={**CHAT, "messages": [{"role": "user", "content": "x" * chars}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert f"{chars} characters" in r.json()["error"]["message"]


def test_half_open_connections_are_closed(server):
    """read_timeout is 1.5 s here: silent sockets, a trickled request head and a stalled body are all ended."""
    port = server.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json"
                    "\r\nContent-Length: 100\r\n\r\n{\"model\":".encode())
    for s in silent + [trickle, stalled]:
        s.settimeout(30)  # a hang guard, not a timing assertion
    for _ in range(6):  # a byte every 0.5 s would have kept the parent protocol's timer from ever firing
        try:
            trickle.sendall(b"X")
        except OSError:
            break
        time.sleep(0.5)
    for s in silent + [trickle]:
        assert _recv_response(s) == b""  # closed by the server, nothing sent
        s.close()
    raw = _recv_response(stalled)
    stalled.close()
    assert raw.startswith(b"HTTP/1.1 408") and b"read_timeout" in raw, raw[:300]
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


# ---- 5. a 500 closes its connection cleanly ------------------------------------------------------------
def test_a_500_sends_connection_close_and_the_pool_recovers(server, monkeypatch):
    def boom():
        raise RuntimeError("a real bug")

    monkeypatch.setattr(server.state.registry, "describe", boom)
    with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as client:
        assert client.get("/health").status_code == 200
        r = client.get("/admin/models")
        assert r.status_code == 500 and r.headers["connection"] == "close"
        assert r.json()["error"]["type"] == "server_error"
        assert client.get("/health").status_code == 200  # the pool opened a new connection; nothing failed


@pytest.mark.parametrize("body, why", [
    ({"seed": 2 ** 64}, "seed"), ({"seed": 1e30}, "seed"), ({"seed": -(2 ** 63) - 1}, "seed"),
])
def test_out_of_range_seeds_are_400(server, body, why):
    r = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, **body}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == why, r.text


def test_admin_load_body_mistakes_are_400(server):
    deep = b'{"path": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [
        (deep, "invalid_json"),
        (json.dumps({"path": "models/x\x00y"}).encode(), "invalid_value"),
        (json.dumps({"path": "a" * (1 << 20)}).encode(), "invalid_value"),
        (json.dumps({"path": 5}).encode(), "invalid_value"),
        (b"\xff\xfe{}", "invalid_json"),
    ]
    for content, code in cases:
        r = httpx.post(server.url + "/admin/models/load", content=content, timeout=30,
                       headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (content[:40], r.text[:300])


# ---- 6. Host, Content-Type, load paths ---------------------------------------------------------------------
def test_dns_rebinding_host_refused(server):
    for path in ("/v1/models", "/health", "/metrics"):
        r = httpx.get(server.url + path, headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", r.text
        assert "evil.example" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers={"Host": "evil.example:8765"}, timeout=10)
    assert r.status_code == 400
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}", "boxb.lan",
                 "BoxB.LAN.:8765"):
        assert httpx.get(server.url + "/v1/models", headers={"Host": host}, timeout=10).status_code == 200, host


def test_post_needs_json_content_type(server):
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(CHAT).encode(), headers=headers,
                       timeout=10)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (ctype, r.text)
    ok = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(CHAT).encode(), timeout=30,
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_load_path_policy(server, micro_model_dir):
    base = server.cfg.layout.base_dir
    inside = make_version(micro_model_dir, base / "models" / "ok-v1", "ok-v1", global_step=8, seed=8)
    outside = make_version(micro_model_dir, Path("/tmp") / f"cadence-outside-{os.getpid()}", "out", global_step=8)
    try:
        r = _load(server, outside, "out")
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed", r.text
        link = base / "models" / "link-v1"
        link.symlink_to(inside, target_is_directory=True)
        r = _load(server, link, "link-v1")
        assert r.status_code == 403 and "is a symlink" in r.json()["error"]["message"]
        escape = base / "models" / "escape-link"
        escape.symlink_to(outside, target_is_directory=True)
        assert _load(server, escape, "escape").status_code == 403
        linked_file = make_version(micro_model_dir, base / "models" / "linked-file", "lf", global_step=8)
        (linked_file / "added_tokens.json").symlink_to("/etc/hostname")
        r = _load(server, linked_file, "lf")
        assert r.status_code == 403 and "added_tokens.json is a symlink" in r.json()["error"]["message"]
        r = _load(server, "models/ok-v1", "ok-v1")  # relative to base_dir, inside models/
        assert r.status_code == 200 and _active(server) == "ok-v1"
    finally:
        shutil.rmtree(outside, ignore_errors=True)
