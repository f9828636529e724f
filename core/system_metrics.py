"""Host metrics for status files and the monitor: RAM/CPU/disk via psutil, every GPU via pynvml (absent cleanly without one)."""
from __future__ import annotations

import logging
import os

import psutil

logger = logging.getLogger(__name__)
_nvml_state = {"ok": None}


def _nvml():
    if _nvml_state["ok"] is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_state["ok"] = pynvml
        except Exception:  # no driver, no GPU, no library: all mean "no GPU here"
            _nvml_state["ok"] = False
    return _nvml_state["ok"] or None


def gpu_stats() -> list[dict]:
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            entry = {"index": i, "name": nv.nvmlDeviceGetName(h), "util_pct": util.gpu,
                     "mem_used_mb": mem.used / 2**20, "mem_total_mb": mem.total / 2**20}
            try:
                entry["temp_c"] = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
                entry["power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
            except Exception:
                pass
            out.append(entry)
    except Exception as exc:
        logger.debug("pynvml query failed: %s", exc)
    return out


def ram_stats() -> dict:
    vm = psutil.virtual_memory()
    rss = psutil.Process(os.getpid()).memory_info().rss
    return {"used_mb": (vm.total - vm.available) / 2**20, "total_mb": vm.total / 2**20, "pct": vm.percent,
            "process_rss_mb": rss / 2**20}


def disk_stats(path: str | os.PathLike) -> dict:
    du = psutil.disk_usage(str(path))
    return {"free_gb": du.free / 1e9, "total_gb": du.total / 1e9, "pct": du.percent}
