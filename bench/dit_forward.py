"""The DiT forward at Wan2.1-1.3B's real shape on a GPU: the fused elementwise kernels against their
PyTorch references, the whole forward (fused path, the PyTorch path, a CUDA-graph replay), and a
profile of one forward by kernel.

Random weights (timing does not depend on values), 832x480x81 (latent 16x21x60x104: 32,760 tokens),
512 text tokens, bfloat16 matmuls. Sections, in one process:

    kernels    each fused kernel (and the cuBLASLt GELU epilogue) vs its PyTorch reference on CUDA:
               median ms, the kernel's bytes moved / time, relative error vs the float32 reference
    sweep      (--sweep) the row kernels' launch configurations (tokens per program x warps)
    forward    WanDiT forward, batch --batch: fused path, PyTorch path (kernels="reference"), and
               the fused path replayed from a CUDA graph; TFLOP/s at 289 TFLOP per batch-1 forward
    profile    one fused forward under torch.profiler: CUDA time by kernel category, top 15 kernels

    python -m bench.dit_forward [--batch 1] [--kernel-batch 1 2] [--repeats 5] [--sweep] [--json out.json]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

from bench.timing import graph_replay_ms, median_ms, relative_error

from numina_engine.engine.config import WAN_1_3B
from numina_engine.engine.model import WanDiT, build_rope_tables
from numina_engine.kernels import KernelChoice
from numina_engine.kernels import (
    gated_residual,
    gated_residual_add,
    gated_residual_add_reference,
    layer_norm_modulate,
    layer_norm_modulate_reference,
    norm_modulate,
    qk_norm_rope,
    qk_norm_rope_reference,
    rms_norm_rope,
)
from numina_engine.kernels._rows import RowLaunch

FLOP_PER_FORWARD_1_3B_81F = 289e12      # one batch-1 forward at 832x480x81 (shared/ANCHORS.md)
TARGET_MS = 520.0                       # the target for one batch-1 forward on an H100
GRID = (21, 30, 52)                     # token grid (frames, height, width) of 832x480x81
TOKENS = GRID[0] * GRID[1] * GRID[2]
DIM, HEADS, FFN_DIM, EPS = WAN_1_3B.dim, WAN_1_3B.num_heads, WAN_1_3B.ffn_dim, WAN_1_3B.eps
DEVICE = torch.device("cuda")

# Our kernels by their names in a profile; the other categories by substrings of kernel names
# (checked in this order: cuDNN's attention kernels also contain "sm90").
OUR_KERNELS = ("_layer_norm_modulate_kernel", "_qk_norm_rope_kernel", "_gated_residual_add_kernel")
CATEGORIES = (("fused elementwise (ours)", OUR_KERNELS),
              ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
              ("matmul / conv", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "conv", "sm90", "sm80")))


def kernel_cases(batch: int) -> list[dict]:
    """Each case: name, fused and reference callables, bytes the fused kernel moves, and a callable
    giving (fused output, float32 reference output) for the error column."""
    gen = torch.Generator(DEVICE).manual_seed(batch)
    hidden = torch.randn(batch, TOKENS, DIM, generator=gen, device=DEVICE) * 3 + 1
    modulation = 0.5 * torch.randn(batch, 6, DIM, generator=gen, device=DEVICE)
    shift, scale, gate = modulation[:, 0], modulation[:, 1], modulation[:, 2]
    weight = 1 + 0.3 * torch.randn(DIM, generator=gen, device=DEVICE)
    bias = 0.3 * torch.randn(DIM, generator=gen, device=DEVICE)
    projection = torch.randn(batch, TOKENS, DIM, generator=gen, device=DEVICE).to(torch.bfloat16)
    cos, sin = (t.to(DEVICE) for t in build_rope_tables(GRID, DIM // HEADS))
    ffn_weight = (torch.randn(FFN_DIM, DIM, generator=gen, device=DEVICE) / DIM ** 0.5).to(torch.bfloat16)
    ffn_bias = (0.1 * torch.randn(FFN_DIM, generator=gen, device=DEVICE)).to(torch.bfloat16)
    tokens = projection.flatten(0, 1)
    bf16 = torch.bfloat16
    elements = batch * TOKENS * DIM
    table_bytes = 2 * TOKENS * (DIM // HEADS // 2) * 4

    def norm(affine, modulated):
        args = (weight if affine else None, bias if affine else None, scale if modulated else None,
                shift if modulated else None)
        return (lambda: layer_norm_modulate(hidden, *args, eps=EPS, out_dtype=bf16),
                lambda: layer_norm_modulate_reference(hidden, *args, eps=EPS, out_dtype=bf16),
                lambda: (layer_norm_modulate(hidden, *args, eps=EPS, out_dtype=bf16),
                         layer_norm_modulate_reference(hidden, *args, eps=EPS, out_dtype=torch.float32)))

    def qk(rope):
        args = (weight, cos, sin) if rope else (weight,)
        return (lambda: qk_norm_rope(projection, *args, num_heads=HEADS, eps=EPS),
                lambda: qk_norm_rope_reference(projection, *args, num_heads=HEADS, eps=EPS),
                lambda: (qk_norm_rope(projection, *args, num_heads=HEADS, eps=EPS),
                         qk_norm_rope_reference(projection.float(), *args, num_heads=HEADS, eps=EPS)))

    def residual(gated):
        g = gate if gated else None
        return (lambda: gated_residual_add(hidden, projection, g),
                lambda: gated_residual_add_reference(hidden, projection, g),
                lambda: (gated_residual_add(hidden.clone(), projection, g),
                         gated_residual_add_reference(hidden.clone(), projection, g)))

    def ffn_up():
        return (lambda: torch._addmm_activation(ffn_bias, tokens, ffn_weight.t(), use_gelu=True),
                lambda: F.gelu(F.linear(tokens, ffn_weight, ffn_bias), approximate="tanh"),
                lambda: (torch._addmm_activation(ffn_bias, tokens, ffn_weight.t(), use_gelu=True),
                         F.gelu(F.linear(tokens.float(), ffn_weight.float(), ffn_bias.float()), approximate="tanh")))

    return [
        dict(name="layer_norm_modulate, modulated (norm1, norm2, head)", calls=norm(False, True), bytes=6 * elements),
        dict(name="layer_norm_modulate, affine (norm3)", calls=norm(True, False), bytes=6 * elements),
        dict(name="qk_norm_rope, RMSNorm + RoPE (self-attention q, k)", calls=qk(True),
             bytes=4 * elements + table_bytes),
        dict(name="qk_norm_rope, RMSNorm (cross-attention q)", calls=qk(False), bytes=4 * elements),
        dict(name="gated_residual_add, gated (self-attention, FFN)", calls=residual(True), bytes=10 * elements),
        dict(name="gated_residual_add, no gate (cross-attention)", calls=residual(False), bytes=10 * elements),
        dict(name="FFN up-projection + GELU(tanh): cuBLASLt epilogue vs F.linear + F.gelu", calls=ffn_up(),
             bytes=None),
    ]


def kernel_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for case in kernel_cases(batch):
        fused, reference, outputs = case["calls"]
        fused_ms, reference_ms = median_ms(fused, repeats), median_ms(reference, repeats)
        actual, expected = outputs()
        row = dict(kernel=case["name"], batch=batch, fused_ms=fused_ms, reference_ms=reference_ms,
                   speedup=reference_ms / fused_ms, relative_error=relative_error(actual, expected))
        if case["bytes"] is not None:
            row["fused_tb_per_s"] = case["bytes"] / (fused_ms / 1e3) / 1e12
        rows.append(row)
        del actual, expected
    torch.cuda.empty_cache()
    return rows


def sweep_rows(batch: int, repeats: int) -> list[dict]:
    """Median ms of each row kernel's main case under each launch configuration."""
    cases = {case["name"]: case["calls"][0] for case in kernel_cases(batch)}
    kernels = ((norm_modulate, "layer_norm_modulate, modulated (norm1, norm2, head)"),
               (rms_norm_rope, "qk_norm_rope, RMSNorm + RoPE (self-attention q, k)"),
               (gated_residual, "gated_residual_add, gated (self-attention, FFN)"))
    rows = []
    for module, name in kernels:
        default = module.GPU_LAUNCH
        try:
            for rows_per_program in (1, 2, 4):
                for num_warps in (4, 8):
                    module.GPU_LAUNCH = RowLaunch(rows=rows_per_program, num_warps=num_warps)
                    rows.append(dict(kernel=name, rows=rows_per_program, num_warps=num_warps,
                                     default=module.GPU_LAUNCH == default, ms=median_ms(cases[name], repeats)))
        finally:
            module.GPU_LAUNCH = default
    return rows


def forward_inputs(batch: int):
    gen = torch.Generator(DEVICE).manual_seed(1)
    latents = torch.randn(batch, 16, GRID[0], GRID[1] * 2, GRID[2] * 2, generator=gen, device=DEVICE)
    timestep = torch.full((batch,), 757.0, device=DEVICE)
    context = torch.randn(batch, WAN_1_3B.text_len, WAN_1_3B.text_dim, generator=gen, device=DEVICE)
    context[:, 40:] = 0                                                  # zero-padded text past the prompt
    return latents, timestep, context.to(torch.bfloat16)


def kernel_profile(forward) -> list[tuple[str, int, float]]:
    """(kernel name, calls, total ms) of every CUDA kernel in one call of `forward()`, longest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += 1
            totals[event.name][1] += event.time_range.elapsed_us() / 1e3
    return sorted(((name, calls, ms) for name, (calls, ms) in totals.items()), key=lambda row: -row[2])


def category(kernel_name: str) -> str:
    lowered = kernel_name.lower()
    for name, markers in CATEGORIES:
        if any(marker.lower() in lowered for marker in markers):
            return name
    return "other (elementwise, copies, reductions)"


def forward_section(batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = WanDiT(WAN_1_3B)
    model = model.cast_weights(torch.bfloat16).eval().requires_grad_(False)
    inputs = forward_inputs(batch)

    def forward():
        return model(*inputs)

    result = {"batch": batch}
    with torch.inference_mode():
        fused_out = forward()
        result["fused_ms"] = median_ms(forward, repeats)
        model.kernels = KernelChoice("reference")
        try:
            torch_out = forward()
            result["torch_path_ms"] = median_ms(forward, max(2, repeats // 2))
        finally:
            model.kernels = KernelChoice("auto")
        result["relative_error_fused_vs_torch_path"] = relative_error(fused_out, torch_out)
        del fused_out, torch_out
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        forward()
        result["peak_gib_eager"] = torch.cuda.max_memory_allocated() / 2 ** 30
        try:            # reported, not fatal: the sections after it still run
            result["graph_replay_ms"] = graph_replay_ms(forward, repeats)
        except RuntimeError as error:
            result["graph_replay_error"] = str(error)
        profile_rows = kernel_profile(forward)
    flop = FLOP_PER_FORWARD_1_3B_81F * batch
    for key in ("fused_ms", "torch_path_ms", "graph_replay_ms"):
        if key in result:
            result[key.replace("_ms", "_tflops")] = flop / (result[key] / 1e3) / 1e12
    by_category: dict[str, float] = defaultdict(float)
    for name, _, ms in profile_rows:
        by_category[category(name)] += ms
    result["profile_total_ms"] = sum(by_category.values())
    result["profile_by_category_ms"] = dict(sorted(by_category.items(), key=lambda item: -item[1]))
    result["profile_top15"] = [dict(kernel=name, calls=calls, ms=ms, category=category(name))
                               for name, calls, ms in profile_rows[:15]]
    return result


def print_report(kernels: list[dict], sweep: list[dict], forward: dict) -> None:
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| kernel (bf16, 32,760 tokens x 1536) | B | fused ms | PyTorch ms | speedup | fused TB/s | rel. error |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in kernels:
        bandwidth = f"{row['fused_tb_per_s']:.2f}" if "fused_tb_per_s" in row else ""
        print(f"| {row['kernel']} | {row['batch']} | {row['fused_ms']:.3f} | {row['reference_ms']:.3f} | "
              f"{row['speedup']:.1f}x | {bandwidth} | {row['relative_error']:.1e} |")
    if sweep:
        print("\n| launch sweep | tokens/program | warps | ms |")
        print("| --- | ---: | ---: | ---: |")
        for row in sweep:
            mark = " (default)" if row["default"] else ""
            print(f"| {row['kernel']}{mark} | {row['rows']} | {row['num_warps']} | {row['ms']:.3f} |")
    batch = forward["batch"]
    print(f"\n| WanDiT forward, B={batch}, bf16, 832x480x81 | ms | TFLOP/s |")
    print("| --- | ---: | ---: |")
    for label, key in (("fused path (eager)", "fused"), ("PyTorch path (eager)", "torch_path"),
                       ("fused path, CUDA-graph replay", "graph_replay")):
        if key + "_ms" in forward:
            print(f"| {label} | {forward[key + '_ms']:.1f} | {forward[key + '_tflops']:.0f} |")
        else:
            print(f"| {label}: failed ({forward[key + '_error'][:200]}) | | |")
    print(f"\ntarget (B=1): <= {TARGET_MS:.0f} ms; fused vs PyTorch path relative error "
          f"{forward['relative_error_fused_vs_torch_path']:.2e}; peak {forward['peak_gib_eager']:.1f} GiB")
    total = forward["profile_total_ms"]
    print(f"\nprofile of one fused forward: {total:.1f} ms of CUDA kernels\n")
    print("| category | ms | share |")
    print("| --- | ---: | ---: |")
    for name, ms in forward["profile_by_category_ms"].items():
        print(f"| {name} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print("\n| top 15 CUDA kernels | category | calls | ms | share |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in forward["profile_top15"]:
        print(f"| {row['kernel'][:110]} | {row['category']} | {row['calls']} | {row['ms']:.1f} | "
              f"{100 * row['ms'] / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="batch of the forward section")
    parser.add_argument("--kernel-batch", type=int, nargs="+", default=[1, 2], help="batches of the kernel section")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="also time the row kernels' launch configurations")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("dit_forward.py needs a CUDA GPU")

    with torch.inference_mode():
        kernels = [row for batch in args.kernel_batch for row in kernel_rows(batch, 2 * args.repeats)]
        sweep = sweep_rows(args.kernel_batch[0], 2 * args.repeats) if args.sweep else []
    torch.cuda.empty_cache()
    forward = forward_section(args.batch, args.repeats)
    print_report(kernels, sweep, forward)
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/dit_forward.py", {"kernels": kernels, "sweep": sweep, "forward": forward})


if __name__ == "__main__":
    main()
