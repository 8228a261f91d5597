"""Shared pieces of the GPU benchmarks: a session-wide record of CUDA-event medians, printed side
by side (one markdown table per group) at the end of the run."""
from collections import defaultdict

import pytest

# group -> case name -> median milliseconds (CUDA events)
_GPU_MEDIANS: dict[str, dict[str, float]] = defaultdict(dict)


@pytest.fixture(scope="session")
def gpu_medians() -> dict[str, dict[str, float]]:
    """Benchmarks record `gpu_medians[group][case] = median_ms` here for the end-of-run summary."""
    return _GPU_MEDIANS


def pytest_terminal_summary(terminalreporter):
    if not _GPU_MEDIANS:
        return
    terminalreporter.section("GPU medians (CUDA events)")
    for group, cases in _GPU_MEDIANS.items():
        terminalreporter.write_line(f"\n{group}\n")
        terminalreporter.write_line("| case | median ms |")
        terminalreporter.write_line("| --- | ---: |")
        for case, ms in cases.items():
            terminalreporter.write_line(f"| {case} | {ms:.3f} |")
