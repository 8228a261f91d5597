"""One writer for measured results: every JSON under docs/results/ says where and when it was measured.

    from bench.results_file import write_results
    write_results("docs/results/e2e_h200.json", "bench/e2e.py", {"rows": [...]}, argv=sys.argv[1:])

The file holds {"script", "argv", "device", "date", "git_commit", "git_dirty", "versions", "results"}:
`device` is the CUDA device's name (torch.cuda.get_device_name) or "cpu: <processor>, <n> cores" when
nothing ran on a GPU; `date` is UTC ISO-8601; versions of python, torch and triton (None when absent).
README's tables are rendered from these files (tools/render_readme_tables.py), never typed in.
Scripts that merge several parts (shards, seeds, GPU counts) refuse parts of different runs with
`require_one_run` (one rule for all of them: commit, checkpoint, settings agree).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device: str | None = None) -> str:
    """The GPU's name when `device` is CUDA (default: CUDA when available), else the CPU's description."""
    import torch

    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda:
        return torch.cuda.get_device_name(torch.device(device or "cuda"))
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _versions() -> dict[str, str | None]:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version}


def provenance(script: str, argv: list[str] | None = None, device: str | None = None) -> dict:
    """Where, when and with what a measurement ran (the header every results file carries)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "script": script,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        # a copy of the tree whose .git is absent or stale (the GPU machine's) names its commit in NUMINA_GIT_COMMIT
        "git_commit": os.environ.get("NUMINA_GIT_COMMIT") or _git("rev-parse", "HEAD"),
        "git_dirty": (bool(status) if status is not None else None) if "NUMINA_GIT_COMMIT" not in os.environ else None,
        "versions": _versions(),
    }


def write_results(path: str | os.PathLike, script: str, results: dict, *, argv: list[str] | None = None,
                  device: str | None = None, header: dict | None = None) -> Path:
    """Write `results` under a provenance header to `path` (JSON, 2-space indent, atomically); returns the path.

    `header`: a `provenance(...)` taken before measuring (long runs: the git state and date are then
    those of the start); by default it is taken now.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**(header or provenance(script, argv, device)), "results": results}
    temp = path.with_name(path.name + ".tmp")         # whole file or none: a run killed mid-write keeps the last
    temp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    temp.replace(path)
    return path


def require_one_run(parts: dict[str, dict], remedy: str) -> None:
    """Refuse to merge results of different runs: SystemExit naming the first field whose value differs
    between the parts, each value with the parts that have it, then `remedy`.

    parts: a part's name (its file) -> the fields that make a run one run (its commit, checkpoint,
    settings: JSON values), the same fields for every part; values are compared as JSON (None = absent).
    """
    fields = list(dict.fromkeys(field for values in parts.values() for field in values))
    for field in fields:
        holders: dict[str, list[str]] = {}
        for name, values in parts.items():
            holders.setdefault(json.dumps(values.get(field), sort_keys=True), []).append(name)
        if len(holders) > 1:
            listing = "; ".join(f"{value} in {', '.join(names)}" for value, names in holders.items())
            raise SystemExit(f"the results differ in {field} ({listing}): {remedy}")
