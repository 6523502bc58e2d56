"""The process's own memory figures: RSS against the kernel's, and no CUDA figure without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

from tuneserve.memory import cuda_memory_bytes, memory_figures, peak_rss_bytes, rss_bytes


def _kernel_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_rss_is_the_kernels_figure_and_follows_an_allocation() -> None:
    before = rss_bytes()
    assert abs(before - _kernel_rss()) < 8 * 2**20
    block = bytearray(64 * 2**20)  # 64 MiB, touched (zeroed) pages
    grown = rss_bytes() - before
    assert 56 * 2**20 < grown < 80 * 2**20, grown
    assert peak_rss_bytes() >= rss_bytes()
    del block


def test_no_cuda_figure_without_a_gpu_and_the_benchmark_says_so() -> None:
    # no NVIDIA driver on this machine: no number is made up
    assert cuda_memory_bytes() == {}
    figures = memory_figures(cuda=True)
    assert figures["cuda_mib"] == {} and "no CUDA figure" in figures["cuda_note"]
    assert 0 < figures["rss_mib"] <= figures["peak_rss_mib"]
    assert "cuda_mib" not in memory_figures(cuda=False)
