"""CUDA-event timing shared by the benchmark scripts."""
from __future__ import annotations

import torch


def median_ms(fn, repeats: int = 10) -> float:
    """Median milliseconds of `fn()` over `repeats` calls, after one warm-up call; CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
