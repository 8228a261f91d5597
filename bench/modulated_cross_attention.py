"""What a modulated cross-attention call costs against a plain one, by modulated area.

At the real Wan2.1-1.3B shape (21 frames of 30x52 tokens, 12 heads of 128, 512 text tokens), bf16,
CFG batched (B=2, bias on row 0), CUDA-event medians, side by side in one run:

- plain SDPA (what every unmodulated block runs);
- the engine's call (engine/attention.py modulated_cross_attention) for layouts whose removed and
  added pixels cover a growing share of every frame: plain SDPA, then the modulated rows again with
  their compact bias (layout_bias + the column-bias kernel);
- the column-bias kernel over every row of both batch elements, bias prebuilt (the way the engine
  ran before it recomputed only the modulated rows);
- and, per layout, the engine call's relative error against the float32 reference of the same bias.
Each call is timed eagerly (queued back to back) and replayed from a CUDA graph, as the engine runs
its denoising steps (there host-side launch costs vanish and only GPU time is left).

Usage (CUDA machine, repository root):  python -m bench.modulated_cross_attention [--json out.json]
"""
from __future__ import annotations

import argparse

import torch

from bench.test_bench_kernels import (
    CONFIG,
    FRAMES,
    GRID_HW,
    MODULATED_STEP,
    NOUN_TOKENS,
    cross_attention_inputs,
    gpu_median_ms,
    plain_sdpa,
)
from bench.timing import graph_replay_ms, relative_error
from numina_engine.engine.attention import modulated_cross_attention
from numina_engine.engine.forward_state import Modulation
from numina_engine.kernels import cross_attention_with_column_bias, cross_attention_with_column_bias_reference
from numina_engine.numina.config import LABEL_ADDED_BASE, LABEL_REMOVED
from numina_engine.numina.modulation import build_modulation_plan, layout_bias


def layouts_covering(radius: float, *, whole_frame_reference: bool = False) -> dict[str, torch.Tensor]:
    """Per noun, int32 [F, 30, 52]. Default: the first noun has an existing instance (a disc of radius 3
    in a corner: the reference) and an added disc of `radius` tokens at the centre, the second noun a
    removed disc of `radius` there (radius inf: every pixel). whole_frame_reference: both nouns add a
    disc of `radius` at the centre of one existing instance covering the rest of the frame (like the
    e2e bench's forced modulation on random weights, where one instance covers each frame)."""
    h, w = GRID_HW
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius ** 2
    nouns = list(NOUN_TOKENS)
    layouts = {noun: torch.zeros(FRAMES, h, w, dtype=torch.int32) for noun in nouns}
    if whole_frame_reference:
        for labels in layouts.values():
            labels[:] = 1
            labels[:, disc] = LABEL_ADDED_BASE
        return layouts
    first, second = layouts[nouns[0]], layouts[nouns[1]]
    corner = (yy - 5) ** 2 + (xx - 5) ** 2 <= 9
    first[:, corner] = 1
    first[:, disc & ~corner] = LABEL_ADDED_BASE
    second[:, disc] = LABEL_REMOVED
    return layouts


@torch.inference_mode()      # as the engine runs: KernelChoice "auto" picks the kernels on CUDA
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("modulated_cross_attention.py needs a CUDA GPU")
    q, k, v = cross_attention_inputs(2)
    delta = torch.tensor(CONFIG.delta(MODULATED_STEP), dtype=torch.float32, device="cuda")
    plain_ms = gpu_median_ms(lambda: plain_sdpa(q, k, v))
    rows = [{"call": "plain SDPA", "modulated_share": 0.0, "ms": plain_ms,
             "graph_ms": graph_replay_ms(lambda: plain_sdpa(q, k, v), repeats=50)}]
    cases = (("added disc r=3 per noun, the rest of each frame the reference (e2e-like)", 3, True),
             ("added + removed disc r=6, small reference", 6, False),
             ("added + removed disc r=12, small reference", 12, False),
             ("added + removed disc r=20, small reference", 20, False),
             ("every pixel", float("inf"), False))
    for name, radius, whole_frame in cases:
        layouts = layouts_covering(radius, whole_frame_reference=whole_frame)
        plan = build_modulation_plan(layouts, NOUN_TOKENS, "cuda", torch.bfloat16)
        modulation = Modulation(plan=plan, delta=delta, config=CONFIG, batch_index=0)
        share = plan.num_modulated_queries / plan.num_queries
        call = lambda: modulated_cross_attention(q, k, v, modulation)  # noqa: E731
        bias = layout_bias(plan, q[0], k[0], delta, CONFIG)
        every_row = torch.zeros(q.shape[1], bias.shape[1], device="cuda").index_copy_(0, plan.modulated_queries, bias)
        expected = cross_attention_with_column_bias_reference(q, k, v, plan.bias_columns, every_row)
        rows.append({"call": f"engine: {name}", "modulated_share": share, "ms": gpu_median_ms(call),
                     "graph_ms": graph_replay_ms(call, repeats=50), "relative_error": relative_error(call(), expected)})
        whole = lambda: cross_attention_with_column_bias(q, k, v, plan.bias_columns, every_row)  # noqa: E731
        rows.append({"call": f"column-bias kernel on every row, bias prebuilt: {name}", "modulated_share": share,
                     "ms": gpu_median_ms(whole), "graph_ms": graph_replay_ms(whole, repeats=50)})
        torch.cuda.empty_cache()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; B=2, bf16, real shape\n")
    plain_graph_ms = rows[0]["graph_ms"]
    print("| call | modulated share of the queries | median ms (eager) | x plain | median ms (CUDA graph) | x plain "
          "| rel. error vs fp32 reference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        error = f"{row['relative_error']:.1e}" if "relative_error" in row else ""
        print(f"| {row['call']} | {row['modulated_share']:.1%} | {row['ms']:.3f} | {row['ms'] / plain_ms:.2f} "
              f"| {row['graph_ms']:.3f} | {row['graph_ms'] / plain_graph_ms:.2f} | {error} |")
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/modulated_cross_attention.py", {"rows": rows})


if __name__ == "__main__":
    main()
