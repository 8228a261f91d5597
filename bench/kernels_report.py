"""Markdown report of the attention-kernel benchmarks at the real Wan2.1-1.3B shape (bf16): the
medians of bench/test_bench_kernels.py's cases, each as a multiple of plain SDPA in its group,
and the relative errors of our kernels against their references (and against the authors' way
where both compute the same function). Exits with an error listing them when a case misses its
target (TARGETS).

Usage (on a CUDA machine, from the repository root):  python -m bench.kernels_report [--batch 1 2]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.test_bench_kernels import (
    BATCHES,
    BIAS_GROUP,
    CASES,
    FRAME_TOKENS,
    FRAMES,
    NOUN_GROUP,
    SELF_GROUP,
    TARGETS,
    VIDEO_LEN,
    authors_cross_attention_extract,
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


def timing_rows(batch: int) -> list[tuple[str, str, float, float, float | None]]:
    """(group, case, median ms, x plain SDPA, target) for every benchmark case at this batch."""
    medians: dict[tuple[str, str], float] = {}
    for group, name, build in CASES:
        medians[group, name] = gpu_median_ms(build(batch))
        torch.cuda.empty_cache()
    rows = []
    for (group, name), ms in medians.items():
        rows.append((group, name, ms, ms / medians[group, "plain SDPA"], TARGETS.get((group, name))))
    return rows


def error_rows(batch: int) -> list[tuple[str, float]]:
    """(what, relative error) of our kernels at the real shape, batch element 0 for the maps."""
    layout = dict(frame_tokens=FRAME_TOKENS, num_frames=FRAMES)
    rows = []
    q, k, v = self_attention_inputs(batch)
    out, frame_lse = attention_with_frame_lse(q, k, v, **layout)
    ref_out, ref_lse = attention_with_frame_lse_reference(q, k, v, **layout)
    rows += [("attention_with_frame_lse: out vs reference", relative_error(out, ref_out)),
             ("attention_with_frame_lse: frame_lse vs reference", relative_error(frame_lse, ref_lse))]
    del out, ref_out
    out, _ = attention_with_frame_lse(q, k, v, **layout, output="within_frame")
    ref_out, _ = attention_with_frame_lse_reference(q, k, v, **layout, output="within_frame")
    rows.append(("attention_with_frame_lse: within-frame out vs per-frame SDPA reference",
                 relative_error(out, ref_out)))
    del out, ref_out
    maps = frame_attention_maps(q, k, frame_lse, **layout)
    ref_maps = frame_attention_maps_reference(q, k, ref_lse, **layout)
    rows.append(("frame_attention_maps vs reference", relative_error(maps, ref_maps)))
    del maps, ref_maps
    torch.cuda.empty_cache()

    q, k, v = cross_attention_inputs(batch)
    noun_tokens = noun_token_tensor()
    out, noun_maps = cross_attention_with_noun_maps(q, k, v, noun_tokens)
    ref_out, ref_maps = cross_attention_with_noun_maps_reference(q, k, v, noun_tokens)
    _, authors_maps = authors_cross_attention_extract(q, k, v)
    authors = torch.stack([torch.from_numpy(np.stack(frames).reshape(VIDEO_LEN))
                           for frames in authors_maps.values()]).to(noun_maps.device)
    rows += [("cross_attention_with_noun_maps: out vs reference", relative_error(out, ref_out)),
             ("cross_attention_with_noun_maps: noun_maps vs reference", relative_error(noun_maps, ref_maps)),
             ("cross_attention_with_noun_maps: noun_maps vs the authors' way",
              relative_error(noun_maps[:, :VIDEO_LEN], authors))]

    dense = authors_dense_bias(batch)
    columns, bias = compact_bias_from_dense(dense)
    out = cross_attention_with_column_bias(q, k, v, columns, bias)
    ref_out = cross_attention_with_column_bias_reference(q, k, v, columns, bias)
    rows.append(("cross_attention_with_column_bias: out vs reference", relative_error(out, ref_out)))
    if batch == 1:  # the authors' bias applies to every batch element, ours to bias_batch only
        authors_out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=dense).transpose(1, 2)
        rows.append(("cross_attention_with_column_bias: out vs the authors' dense-bias SDPA",
                     relative_error(out, authors_out)))
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=list(BATCHES), help="batch sizes (CFG batched = 2)")
    parser.add_argument("--json", default=None, help="also write the timings and errors here")
    args = parser.parse_args()
    timings, errors = [], []
    if not torch.cuda.is_available():
        raise SystemExit("kernels_report.py needs a CUDA GPU")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| group | case | B | median ms | x plain SDPA | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    missed = []
    for batch in args.batch:
        for group, name, ms, ratio, target in timing_rows(batch):
            target_text = f"<= {target:g}x" if target is not None else ""
            timings.append({"group": group, "case": name, "batch": batch, "ms": ms, "x_plain": ratio,
                            "target_x_plain": target})
            if target is not None and ratio > target:
                missed.append(f"{group} | {name} | B={batch}: {ratio:.2f}x > {target:g}x")
                target_text += " MISSED"
            print(f"| {group} | {name} | {batch} | {ms:.3f} | {ratio:.2f} | {target_text} |", flush=True)
    print("\n| relative error (bf16, real shape) | B | value |")
    print("| --- | ---: | ---: |")
    for batch in args.batch:
        for what, value in error_rows(batch):
            errors.append({"what": what, "batch": batch, "relative_error": value})
            print(f"| {what} | {batch} | {value:.2e} |", flush=True)
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/kernels_report.py", {"timings": timings, "relative_errors": errors,
                                                                  "targets_missed": missed})
    if missed:
        raise SystemExit("targets missed:\n  " + "\n  ".join(missed))


if __name__ == "__main__":
    main()
