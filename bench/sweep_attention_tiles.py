"""Sweep of the attention kernels' GPU launch tiles at Wan2.1-1.3B's real shape (bf16, batch 1):
every candidate of kernels/tiles.py's SWEEP_CANDIDATES for each kernel, timed by CUDA events
(median), checked against the PyTorch reference. Writes docs/results/attention_tiles.json (device,
date, commit, every timing, the fastest candidate per kernel) and prints the fastest, which
kernels/tiles.py's head_dim-128 entries should hold.

Usage (on a CUDA machine, from the repository root):  python -m bench.sweep_attention_tiles [--out PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

from bench.test_bench_kernels import (
    FRAME_TOKENS,
    FRAMES,
    authors_dense_bias,
    compact_bias_from_dense,
    cross_attention_inputs,
    gpu_median_ms,
    noun_token_tensor,
    self_attention_inputs,
)
from bench.timing import relative_error
from numina_engine.kernels import (
    attention_with_frame_lse,
    attention_with_frame_lse_reference,
    cross_attention_with_column_bias,
    cross_attention_with_column_bias_reference,
    cross_attention_with_noun_maps,
    cross_attention_with_noun_maps_reference,
    frame_attention_maps,
    frame_attention_maps_reference,
)
from numina_engine.kernels.tiles import ATTENTION_TILES, SWEEP_CANDIDATES

OUT = Path("docs/results/attention_tiles.json")


def kernel_calls():
    """name -> (call(tiles) -> output tensor, reference output), at batch 1."""
    layout = dict(frame_tokens=FRAME_TOKENS, num_frames=FRAMES)
    q, k, v = self_attention_inputs(1)
    _, frame_lse = attention_with_frame_lse(q, k, v, **layout)
    cq, ck, cv = cross_attention_inputs(1)
    nouns = noun_token_tensor()
    columns, bias = compact_bias_from_dense(authors_dense_bias(1))
    return {
        "attention_with_frame_lse": (
            lambda tiles: attention_with_frame_lse(q, k, v, **layout, tiles=tiles)[0],
            lambda: attention_with_frame_lse_reference(q, k, v, **layout)[0]),
        "frame_attention_maps": (
            lambda tiles: frame_attention_maps(q, k, frame_lse, **layout, tiles=tiles),
            lambda: frame_attention_maps_reference(q, k, frame_lse, **layout)),
        "cross_attention_with_noun_maps": (
            lambda tiles: cross_attention_with_noun_maps(cq, ck, cv, nouns, tiles=tiles)[1],
            lambda: cross_attention_with_noun_maps_reference(cq, ck, cv, nouns)[1]),
        "cross_attention_with_column_bias": (
            lambda tiles: cross_attention_with_column_bias(cq, ck, cv, columns, bias, tiles=tiles),
            lambda: cross_attention_with_column_bias_reference(cq, ck, cv, columns, bias)),
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("sweep_attention_tiles.py needs a CUDA GPU")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "shape": "21 frames x 1560 tokens, 12 heads of 128, 512 text tokens, bf16, B=1",
              "kernels": {}}
    for name, (call, reference) in kernel_calls().items():
        expected = reference()
        rows = []
        for tiles in SWEEP_CANDIDATES:
            row = {"tiles": asdict(tiles), "in_table": tiles == ATTENTION_TILES[name][128]}
            try:
                row["relative_error"] = relative_error(call(tiles), expected)
                row["median_ms"] = gpu_median_ms(lambda: call(tiles))
            except Exception as error:                                           # noqa: BLE001
                row["error"] = f"{type(error).__name__}: {error}"[:300]         # e.g. out of shared memory
            rows.append(row)
            print(name, row, flush=True)
        del expected
        torch.cuda.empty_cache()
        timed = [r for r in rows if "median_ms" in r]
        result["kernels"][name] = {"candidates": rows,
                                   "fastest": min(timed, key=lambda r: r["median_ms"]) if timed else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}\n\n| kernel | fastest tiles | ms | table's tiles | ms |\n| --- | --- | ---: | --- | ---: |")
    for name, entry in result["kernels"].items():
        table = next((r for r in entry["candidates"] if r["in_table"]), None)
        fastest = entry["fastest"] or {}
        print(f"| {name} | {fastest.get('tiles')} | {fastest.get('median_ms', float('nan')):.3f} | "
              f"{table and table['tiles']} | {table.get('median_ms', float('nan')) if table else float('nan'):.3f} |")


if __name__ == "__main__":
    main()
