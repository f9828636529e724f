"""Monitor benchmark: push latency over SSE, history latency on a 1M-point run, server CPU with 20 clients.

Starts `python -m monitoring` (a separate process, as in production) on loopback over a scratch base_dir
holding a synthetic run of --points train steps (plus an eval every 50 and a checkpoint every 500 steps),
then measures:

  1. write -> SSE: a metrics.jsonl line appended here, until the same line arrives over /api/stream
     (goal <= 1 s; the poll interval is monitor.poll_interval = 0.2 s)
  2. history: GET /api/metrics (train loss + EMA, 2,000-point budget; 4 fields; a zoomed range) on the
     1M-point file (goal <= 200 ms), against a baseline measured in the same run: reading and parsing
     the whole file per request, as a naive endpoint would
  3. server CPU (psutil, user+system of the monitor process) with 0 and with 20 SSE clients connected,
     idle and while the trainer logs 10 lines/s
  4. start-up: cold (index built from the file) and warm (index saved in status/.monitor-index/)

Run as:
    python benchmarks/monitor.py [--points 1000000] [--clients 20] [--seconds 15] [--keep DIR] [--write-docs]
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/monitor.py`: the repo root, not benchmarks/

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import httpx
import psutil

from benchmarks.report import BenchmarkRun
from core.config import Layout
from core.state.metrics import Metric, append_metric
from monitoring.demo import write_metrics


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_lines(response):
    event, data = None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class Client(threading.Thread):
    """One SSE client: records when each metric step arrives."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.arrivals: dict[int, float] = {}
        self.connected = threading.Event()
        self.stop = threading.Event()

    def run(self):
        try:
            with httpx.Client(timeout=None) as c, c.stream("GET", f"{self.url}/api/stream") as r:
                for event, data in sse_lines(r):
                    if event == "hello":
                        self.connected.set()
                    elif event == "metric":
                        self.arrivals[json.loads(data).get("global_step")] = time.perf_counter()
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:
            pass  # the server went away at the end of the run


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def measure_cpu(proc, seconds: float, write=None) -> float:
    c0, t0 = cpu_seconds(proc), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        if write:
            write()
        time.sleep(0.1)
    return 100.0 * (cpu_seconds(proc) - c0) / (time.perf_counter() - t0)


def start_monitor(cfg_file: Path, port: int) -> tuple[subprocess.Popen, float]:
    """`python -m monitoring` on loopback; returns it and the seconds until /api/health answered."""
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "monitoring", "--config", str(cfg_file), "--port", str(port),
                               "--log-level", "warning"], cwd=REPO)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return server, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("monitor exited")
        time.sleep(0.1)


def stop_monitor(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def write_docs(run: BenchmarkRun, results: dict, args) -> None:
    sse, hist = results["sse_latency_ms"], results["history"]
    rows = [[f"write -> SSE, {sse['deliveries']:,} deliveries to {args.clients} clients",
             f"p50 {sse['p50']} ms, p95 {sse['p95']} ms, max {sse['max']} ms, {sse['missing']} missing", "", "goal p95 <= 1 s"]]
    rows += [[f"history: {name}", f"p50 {h['p50_ms']} ms, p95 {h['p95_ms']} ms",
              f"read + parse the whole file: {results['baseline_full_read_ms']:,} ms" if i == 0 else "",
              f"{results['history_speedup_vs_full_read']}x faster (goal p95 <= 200 ms)" if i == 0 else ""]
             for i, (name, h) in enumerate(hist.items())]
    rows += [["server CPU, 0 clients, idle", f"{results['cpu_pct_idle_0_clients']} % of one core", "", ""],
             [f"server CPU, {args.clients} clients, idle", f"{results['cpu_pct_idle_clients']} % of one core", "", ""],
             [f"server CPU, {args.clients} clients, 10 lines/s", f"{results['cpu_pct_clients_10_lines_s']} % of one core", "", ""],
             ["start-up: cold (index built from the file) / warm (saved index)",
              f"{results['startup_cold_s']} s / {results['startup_warm_s']} s", "", ""],
             ["server RSS after the cold start", f"{results['server_rss_mb']} MB", "", ""]]
    run.write_docs(f"Monitor ({results['points']:,} train points, {results['metrics_file_mb']} MB metrics.jsonl)",
                   ["what", "Cadence", "baseline in the same run", "ratio / goal"], rows,
                   ["Goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in results["goals_met"].items()) + "."])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000, help="train steps in the synthetic metrics.jsonl")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each CPU measurement")
    ap.add_argument("--requests", type=int, default=30, help="history requests per kind")
    ap.add_argument("--keep", default=None, help="use/keep this base_dir (the metrics file is reused if present)")
    ap.add_argument("--write-docs", action="store_true", help="write the result table into docs/benchmarks.md")
    args = ap.parse_args(argv)
    run = BenchmarkRun.start("monitor", argv=None if argv is None else [__file__, *argv])

    base = Path(args.keep or tempfile.mkdtemp(prefix="cadence-monbench-"))
    metrics = Layout.from_base(base).metrics
    if not metrics.exists():
        t0 = time.perf_counter()
        n = write_metrics(metrics, args.points, time.time() - args.points * 1.3)
        print(f"wrote {n:,} metric lines ({metrics.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
    size_mb = metrics.stat().st_size / 1e6
    cfg_file = base / "config.json"
    cfg_file.write_text(json.dumps({"paths": {"base_dir": str(base)}}))
    shutil.rmtree(base / "status" / ".monitor-index", ignore_errors=True)  # a cold start first
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server, startup = start_monitor(cfg_file, port)
    proc = psutil.Process(server.pid)
    results: dict = {"points": args.points, "metrics_file_mb": round(size_mb, 1)}
    try:
        results["startup_cold_s"] = round(startup, 2)
        results["server_rss_mb"] = round(proc.memory_info().rss / 2**20)
        print(f"monitor up, {args.points:,} points indexed from the file, in {startup:.1f}s "
              f"(RSS {results['server_rss_mb']} MB)")

        # ---------------------------------------------------------------- history latency
        with httpx.Client(base_url=url, timeout=30) as c:
            kinds = {
                "loss+ema (2000 pts)": {"fields": "loss,loss_ema"},
                "4 fields (2000 pts)": {"fields": "loss,loss_ema,lr,tokens_per_s"},
                "zoom 10% (2000 pts)": {"fields": "loss,loss_ema", "step_min": args.points * 0.45,
                                        "step_max": args.points * 0.55},
                "eval val_loss": {"kind": "eval", "fields": "val_loss,val_loss_ema"},
            }
            hist = {}
            for name, params in kinds.items():
                c.get("/api/metrics", params=params)
                times = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = c.get("/api/metrics", params=params)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                hist[name] = {"p50_ms": round(1000 * statistics.median(times), 1),
                              "p95_ms": round(1000 * pct(times, 95), 1), "returned": r.json()["returned"]}
                print(f"history {name:22s} p50 {hist[name]['p50_ms']:7.1f} ms  p95 {hist[name]['p95_ms']:7.1f} ms  "
                      f"({r.json()['returned']} of {r.json()['in_range']:,} points)")
        t = time.perf_counter()
        losses = []
        with open(metrics, "rb") as fh:
            for line in fh:
                rec = json.loads(line)
                if rec.get("type") == "train":
                    losses.append(rec["loss"])
        naive = time.perf_counter() - t
        results["history"] = hist
        results["baseline_full_read_ms"] = round(1000 * naive)
        ratio = naive / (hist["loss+ema (2000 pts)"]["p50_ms"] / 1000)
        results["history_speedup_vs_full_read"] = round(ratio, 1)
        print(f"baseline: read + parse the whole file once: {1000 * naive:.0f} ms  -> index is {ratio:.0f}x faster")

        # ---------------------------------------------------------------- CPU, no clients
        step = [args.points]

        def write_one():
            step[0] += 1
            append_metric(metrics, Metric(type="train", global_step=step[0], loss=0.3, lr=2e-4, tokens_per_s=12000.0))

        results["cpu_pct_idle_0_clients"] = round(measure_cpu(proc, args.seconds), 1)
        print(f"server CPU, 0 clients, idle:            {results['cpu_pct_idle_0_clients']:5.1f} % of one core")

        # ---------------------------------------------------------------- SSE clients
        clients = [Client(url) for _ in range(args.clients)]
        for cl in clients:
            cl.start()
        for cl in clients:
            assert cl.connected.wait(20), "an SSE client did not connect"
        results["cpu_pct_idle_clients"] = round(measure_cpu(proc, args.seconds), 1)
        print(f"server CPU, {args.clients} clients, idle:           {results['cpu_pct_idle_clients']:5.1f} % of one core")
        written: dict[int, float] = {}

        def write_timed():
            write_one()
            written[step[0]] = time.perf_counter()

        results["cpu_pct_clients_10_lines_s"] = round(measure_cpu(proc, args.seconds, write_timed), 1)
        print(f"server CPU, {args.clients} clients, 10 lines/s:     {results['cpu_pct_clients_10_lines_s']:5.1f} % of one core")
        time.sleep(1.5)
        lat = [cl.arrivals[s] - t for cl in clients for s, t in written.items() if s in cl.arrivals]
        missing = sum(1 for cl in clients for s in written if s not in cl.arrivals)
        results["sse_latency_ms"] = {"p50": round(1000 * statistics.median(lat)), "p95": round(1000 * pct(lat, 95)),
                                     "max": round(1000 * max(lat)), "deliveries": len(lat), "missing": missing}
        print(f"write -> SSE ({len(lat)} deliveries to {args.clients} clients): p50 {results['sse_latency_ms']['p50']} ms  "
              f"p95 {results['sse_latency_ms']['p95']} ms  max {results['sse_latency_ms']['max']} ms  missing {missing}")
        for cl in clients:
            cl.stop.set()
        stop_monitor(server)
        server, startup = start_monitor(cfg_file, port)
        results["startup_warm_s"] = round(startup, 2)
        print(f"restart with the saved index (status/.monitor-index/): up in {startup:.1f}s")
        goals = {"sse_p95_le_1s": results["sse_latency_ms"]["p95"] <= 1000 and missing == 0,
                 "history_p95_le_200ms": hist["loss+ema (2000 pts)"]["p95_ms"] <= 200}
        results["goals_met"] = goals
        print("goals:", ", ".join(f"{k} {'OK' if v else 'MISSED'}" for k, v in goals.items()))
        print(json.dumps(results))
        if args.write_docs:
            write_docs(run, results, args)
    finally:
        stop_monitor(server)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
