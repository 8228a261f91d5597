"""CUDA-event timing and the relative error, shared by the benchmark scripts."""
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


def graph_replay_ms(forward, repeats: int = 10) -> float:
    """Median ms of replaying a CUDA graph of `forward()` (captured after a warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    ms = median_ms(graph.replay, repeats)
    del graph
    torch.cuda.empty_cache()
    return ms


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm()).item()
