"""Prometheus text metrics under vLLM's names, so existing vLLM dashboards work unchanged.

Histograms: vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds,
vllm:time_per_output_token_seconds, vllm:e2e_request_latency_seconds,
vllm:request_queue_time_seconds (arrival to admission into a batch; requests
that never got a slot are not observed, as in vLLM), vllm:request_prompt_tokens,
vllm:request_generation_tokens (per finished request, 1-2-5 buckets).
Counters: vllm:prompt_tokens_total, vllm:generation_tokens_total,
vllm:request_success_total{finished_reason}. Gauges: vllm:num_requests_running,
vllm:num_requests_waiting. Cadence's own: cadence:model_info{version,...} 1,
cadence:model_swaps_total, cadence:model_load_failures_total{code},
cadence:requests_rejected_total{reason}.

Library only; the server renders `Metrics.render()` at GET /metrics.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0)
# vLLM's request-latency buckets (queue time shares them); token counts use its 1-2-5 series.
QUEUE_BUCKETS = E2E_BUCKETS + (1920.0, 7680.0)
TOKEN_BUCKETS = tuple(m * 10 ** e for e in range(6) for m in (1, 2, 5))


class Histogram:
    def __init__(self, name: str, help_text: str, buckets):
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, labels: str) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cum = 0
        for le, n in zip(self.buckets, self.counts):
            cum += n
            lines.append(f'{self.name}_bucket{{{labels},le="{le}"}} {cum}')
        lines.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum{{{labels}}} {self.sum}")
        lines.append(f"{self.name}_count{{{labels}}} {self.count}")
        return lines


def _esc(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class Metrics:
    """Thread-safe: the scheduler thread observes, the event loop renders."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self._lock = threading.Lock()
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Histogram of mean time per output token per request in seconds.", ITL_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", E2E_BUCKETS)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", QUEUE_BUCKETS)
        self.prompt_len = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", TOKEN_BUCKETS)
        self.generation_len = Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)
        self.load_failures: dict[str, int] = defaultdict(int)
        self.swaps = 0

    def observe_request(self, seq, now: float) -> None:
        with self._lock:
            self.prompt_tokens += len(seq.prompt_ids)
            self.generation_tokens += len(seq.output_ids)
            self.finished[seq.finish_reason or "abort"] += 1
            if seq.first_token_at is not None:
                self.ttft.observe(seq.first_token_at - seq.arrival)
            for gap in seq.itl:
                self.itl.observe(gap)
            if len(seq.output_ids) > 1 and seq.first_token_at is not None and seq.last_token_at is not None:
                self.tpot.observe((seq.last_token_at - seq.first_token_at) / (len(seq.output_ids) - 1))
            self.e2e.observe(now - seq.arrival)
            if seq.scheduled_at is not None:
                self.queue.observe(seq.scheduled_at - seq.arrival)
            self.prompt_len.observe(len(seq.prompt_ids))
            self.generation_len.observe(len(seq.output_ids))

    def count_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def count_load(self, ok: bool, code: str = "") -> None:
        with self._lock:
            if ok:
                self.swaps += 1
            else:
                self.load_failures[code or "unknown"] += 1

    def render(self, running: int, waiting: int, active, draining: list) -> str:
        m = f'model_name="{_esc(self.model_name)}"'
        out = []
        with self._lock:
            out += ["# HELP vllm:num_requests_running Number of requests in model execution batches.",
                    "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{m}}} {running}",
                    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                    "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{m}}} {waiting}",
                    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
                    "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{{{m}}} {self.prompt_tokens}",
                    "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
                    "# TYPE vllm:generation_tokens_total counter", f"vllm:generation_tokens_total{{{m}}} {self.generation_tokens}",
                    "# HELP vllm:request_success_total Count of finished requests by finish reason.",
                    "# TYPE vllm:request_success_total counter"]
            for reason, n in sorted(self.finished.items()):
                out.append(f'vllm:request_success_total{{{m},finished_reason="{_esc(reason)}"}} {n}')
            for h in (self.ttft, self.itl, self.tpot, self.e2e, self.queue, self.prompt_len, self.generation_len):
                out += h.render(m)
            out += ["# HELP cadence:model_info The model version serving new requests (value 1).",
                    "# TYPE cadence:model_info gauge"]
            if active is not None:
                out.append(f'cadence:model_info{{{m},version="{_esc(active.version)}",global_step="{_esc(active.global_step)}",'
                           f'source_path="{_esc(active.source_path)}"}} 1')
            out += ["# HELP cadence:model_versions_draining Retired versions still finishing in-flight requests.",
                    "# TYPE cadence:model_versions_draining gauge", f"cadence:model_versions_draining{{{m}}} {len(draining)}",
                    "# HELP cadence:model_swaps_total Successful model swaps.",
                    "# TYPE cadence:model_swaps_total counter", f"cadence:model_swaps_total{{{m}}} {self.swaps}",
                    "# HELP cadence:model_load_failures_total Rejected model loads by reason.",
                    "# TYPE cadence:model_load_failures_total counter"]
            for code, n in sorted(self.load_failures.items()):
                out.append(f'cadence:model_load_failures_total{{{m},code="{_esc(code)}"}} {n}')
            out += ["# HELP cadence:requests_rejected_total Requests refused before generation, by reason.",
                    "# TYPE cadence:requests_rejected_total counter"]
            for reason, n in sorted(self.rejected.items()):
                out.append(f'cadence:requests_rejected_total{{{m},reason="{_esc(reason)}"}} {n}')
        return "\n".join(out) + "\n"
