"""This process's memory: resident set size, and its memory on each CUDA device (through NVML).

Both are read in a few microseconds and never allocate on a device. The CUDA figure is the one
``nvidia-smi`` shows for this process (NVML's per-process used memory); NVML ships as
``pynvml`` in the nvidia-ml-py package, a dependency of BentoML. Without an NVIDIA driver, or
where NVML cannot see this process's pid (some containers map pids), there is no CUDA figure:
``cuda_memory_bytes`` returns an empty dict rather than a made-up number.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process now (psutil where installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The highest resident set size this process has had (the kernel's high-water mark, in
    KiB on Linux, lags the current figure by a few pages: never below it here)."""
    return max(int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, rss_bytes())


_nvml_module: Any = None
_nvml_tried = False


def _nvml() -> Any | None:
    """pynvml, initialised once per process; None without the package or a driver."""
    global _nvml_module, _nvml_tried
    if not _nvml_tried:
        _nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_module = pynvml
        except Exception as exc:  # ImportError, or NVMLError without a driver
            log.info("no CUDA memory figures: NVML unavailable (%s)", exc)
    return _nvml_module


def cuda_memory_bytes(pid: int | None = None) -> dict[str, int]:
    """Bytes that process ``pid`` (default: this one) holds on each CUDA device, by ``cuda:N``;
    empty without NVML, a GPU, or a context of this process on one."""
    nvml = _nvml()
    if nvml is None:
        return {}
    pid = os.getpid() if pid is None else pid
    found: dict[str, int] = {}
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == pid and process.usedGpuMemory is not None:
                    found[f"cuda:{index}"] = int(process.usedGpuMemory)
    except Exception as exc:  # NVMLError: a device lost, or the query not supported
        log.debug("no CUDA memory figures: %s", exc)
        return {}
    return found


def memory_figures(cuda: bool = False) -> dict[str, Any]:
    """What a benchmark records about its own process: RSS now and at its peak (MiB), and with
    ``cuda`` its memory per CUDA device (MiB), or why there is none."""
    figures: dict[str, Any] = {
        "rss_mib": round(rss_bytes() / 2**20, 1),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
    }
    if cuda:
        devices = cuda_memory_bytes()
        figures["cuda_mib"] = {d: round(b / 2**20, 1) for d, b in devices.items()}
        if not devices:
            figures["cuda_note"] = "no CUDA figure: NVML unavailable or no context of this process"
    return figures
