"""FP8 self-attention (kernels/fp8_attention.py) against cuDNN's bf16 SDPA, side by side in one run.

Sections, in one process on one CUDA GPU:

    attention  B=2 (CFG rows batched), 12 heads of 128 at 32,760 tokens (Wan2.1-1.3B, 832x480x81) and
               75,600 tokens (1280x720x81), and 40 heads at 75,600 (14B): bf16 SDPA (cuDNN backend, and
               PyTorch's default pick), the FP8 path with its quantisation (eager and CUDA-graph replay)
               and without it (the attention kernel alone), the quantisation alone (Triton kernels vs the
               torch ops of the reference), TFLOP/s, and the relative error of the output against bf16
               SDPA (K smoothed, and not smoothed);
    agreement  the compiled kernels against the torch reference at the 1.3B shape: quantised bytes and
               scales that differ (expected 0), and the output's relative error vs the reference;
    sweep      (--sweep) tiles.FP8_SWEEP_CANDIDATES ((BLOCK_M, BLOCK_N, num_warps, num_stages), loop
               variant: TMA, warp specialisation, per-block P V, float16 exp2) at --sweep-tokens, quantisation
               included; a candidate that fails to compile is recorded;
    forward    one WanDiT-1.3B forward at 832x480x81 (random weights, bf16, batch --forward-batch), with
               --attention bf16 vs fp8: eager and CUDA-graph ms, relative error of the forward output.

Inputs of the attention section: q ~ 2 N(0, 1), k ~ N(0, 1) plus a per-channel offset 2 N(0, 1) shared by
all keys (DiT keys carry one; smoothing removes it), v ~ N(0, 1), bf16. Goal on an H200: FP8 (quantisation
included) <= 0.6x cuDNN at both lengths, forward <= 380 ms.

    python -m bench.fp8_attention [--sweep] [--repeats 5] [--json docs/results/fp8_attention_<gpu>.json]
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.dit_forward import forward_inputs
from bench.timing import graph_replay_ms, median_ms, relative_error
from numina_engine.engine.config import WAN_1_3B
from numina_engine.engine.model import WanDiT
from numina_engine.kernels import KernelChoice
from numina_engine.kernels.fp8_attention import (
    fp8_attention,
    fp8_attention_quantised,
    fp8_attention_reference,
    default_variant,
    fp8_blocks,
    fp8_unsupported_reason,
    quantise_qkv,
    quantise_qkv_reference,
)
from numina_engine.kernels.tiles import FP8_SWEEP_CANDIDATES, Fp8Variant

DEVICE = torch.device("cuda")
HEAD_DIM = 128
CASES = (("1.3B 832x480x81", 2, 32760, 12), ("1.3B 1280x720x81", 2, 75600, 12), ("14B 1280x720x81", 2, 75600, 40))
TARGET_RATIO = 0.6             # FP8 (quantisation included) / cuDNN bf16
TARGET_FORWARD_MS = 380.0      # one 1.3B forward at 832x480x81


def attention_inputs(batch: int, tokens: int, heads: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(DEVICE).manual_seed(seed)
    shape = (batch, tokens, heads, HEAD_DIM)
    q = 2 * torch.randn(shape, generator=gen, device=DEVICE)
    k = torch.randn(shape, generator=gen, device=DEVICE) + 2 * torch.randn(HEAD_DIM, generator=gen, device=DEVICE)
    v = torch.randn(shape, generator=gen, device=DEVICE)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def tflops(batch: int, tokens: int, heads: int, ms: float) -> float:
    return 4 * batch * heads * tokens ** 2 * HEAD_DIM / (ms / 1e3) / 1e12


def attention_row(name: str, batch: int, tokens: int, heads: int, repeats: int) -> dict:
    q, k, v = attention_inputs(batch, tokens, heads, seed=tokens + heads)
    row = {"case": name, "batch": batch, "tokens": tokens, "heads": heads, "head_dim": HEAD_DIM}
    reference = sdpa(q, k, v)
    row["sdpa_default_ms"] = median_ms(lambda: sdpa(q, k, v), repeats)
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            row["sdpa_cudnn_ms"] = median_ms(lambda: sdpa(q, k, v), repeats)
    except RuntimeError as error:                 # no cuDNN attention in this build: the default stands in
        row["sdpa_cudnn_error"] = str(error)[:300]
    bf16_ms = row.get("sdpa_cudnn_ms", row["sdpa_default_ms"])

    row["fp8_ms"] = median_ms(lambda: fp8_attention(q, k, v), repeats)
    row["fp8_graph_ms"] = graph_replay_ms(lambda: fp8_attention(q, k, v), repeats)
    tiles = fp8_blocks(HEAD_DIM)
    quantised = quantise_qkv(q, k, v, tiles)
    row["fp8_kernel_only_ms"] = median_ms(lambda: fp8_attention_quantised(quantised, q.shape, tokens, q.dtype, tiles),
                                          repeats)
    row["quantise_triton_ms"] = median_ms(lambda: quantise_qkv(q, k, v, tiles), repeats)
    del quantised
    row["quantise_torch_ms"] = median_ms(lambda: quantise_qkv_reference(q, k, v, tiles), max(2, repeats // 2))
    row["fp8_over_cudnn"] = row["fp8_ms"] / bf16_ms
    row["fp8_graph_over_cudnn"] = row["fp8_graph_ms"] / bf16_ms
    row["target_ratio"] = TARGET_RATIO
    for key in ("sdpa_default_ms", "sdpa_cudnn_ms", "fp8_ms", "fp8_kernel_only_ms"):
        if key in row:
            row[key.replace("_ms", "_tflops")] = tflops(batch, tokens, heads, row[key])
    row["relative_error_vs_bf16_sdpa"] = relative_error(fp8_attention(q, k, v), reference)
    row["relative_error_vs_bf16_sdpa_unsmoothed_k"] = relative_error(fp8_attention(q, k, v, smooth_k=False), reference)
    torch.cuda.empty_cache()
    return row


def agreement_section() -> dict:
    """Compiled kernels vs quantise_qkv_reference / fp8_attention_reference at B=1, 32,760 tokens, 2 heads."""
    q, k, v = attention_inputs(1, 32760, 2, seed=3)
    tiles = fp8_blocks(HEAD_DIM)
    names = ("q8", "q_scale", "k8", "k_scale", "vt8", "v_scale")
    result = {"batch": 1, "tokens": 32760, "heads": 2, "differing_elements": {}}
    for name, kernel_part, reference_part in zip(names, quantise_qkv(q, k, v, tiles),
                                                 quantise_qkv_reference(q, k, v, tiles)):
        if kernel_part.dtype == torch.float8_e4m3fn:
            kernel_part, reference_part = kernel_part.view(torch.uint8), reference_part.view(torch.uint8)
        result["differing_elements"][name] = int((kernel_part != reference_part).sum().item())
    result["output_relative_error_vs_reference"] = relative_error(fp8_attention(q, k, v),
                                                                  fp8_attention_reference(q, k, v))
    return result


def sweep_rows(tokens: int, repeats: int) -> list[dict]:
    q, k, v = attention_inputs(2, tokens, 12, seed=tokens + 12)
    reference = sdpa(q, k, v)
    default = fp8_blocks(HEAD_DIM)
    rows = []
    for tiles, variant in FP8_SWEEP_CANDIDATES:
        row = {"tokens": tokens, "block_m": tiles.block_m, "block_n": tiles.block_n, "num_warps": tiles.num_warps,
               "num_stages": tiles.num_stages, **asdict(variant), "default": tiles == default and variant == default_variant(q.device)}
        try:
            row["ms"] = median_ms(lambda: fp8_attention(q, k, v, tiles=tiles, variant=variant), repeats)
            row["relative_error_vs_bf16_sdpa"] = relative_error(fp8_attention(q, k, v, tiles=tiles, variant=variant),
                                                                reference)
        except Exception as error:        # noqa: BLE001  (a tile that does not compile or fit is a result)
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def forward_section(batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = WanDiT(WAN_1_3B)
    model = model.cast_weights(torch.bfloat16).eval().requires_grad_(False)
    inputs = forward_inputs(batch)
    result = {"batch": batch, "size": "832x480x81", "target_ms": TARGET_FORWARD_MS}
    outputs = {}
    for attention in ("bf16", "fp8"):
        model.kernels = KernelChoice("auto", attention=attention)      # benchmark only: one model, two settings
        outputs[attention] = model(*inputs)
        result[f"{attention}_ms"] = median_ms(lambda: model(*inputs), repeats)
        try:
            result[f"{attention}_graph_ms"] = graph_replay_ms(lambda: model(*inputs), repeats)
        except RuntimeError as error:
            result[f"{attention}_graph_error"] = str(error)[:300]
    result["relative_error_fp8_vs_bf16"] = relative_error(outputs["fp8"], outputs["bf16"])
    result["fp8_over_bf16"] = result["fp8_ms"] / result["bf16_ms"]
    del model, outputs
    torch.cuda.empty_cache()
    return result


def variant_name(row: dict) -> str:
    names = [field.name for field in fields(Fp8Variant) if row.get(field.name)]
    return "+".join(names) if names else "pointer loads"


def print_report(rows: list[dict], agreement: dict, sweep: list[dict], forward: dict | None) -> None:
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| case | B x L x H | cuDNN bf16 ms | default SDPA ms | FP8 ms (quant. incl.) | graph ms | FP8 kernel only ms "
          "| quant. Triton / torch ms | FP8 / cuDNN | FP8 TFLOP/s | rel. error vs bf16 (unsmoothed K) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cudnn = f"{r['sdpa_cudnn_ms']:.2f}" if "sdpa_cudnn_ms" in r else "n/a"
        print(f"| {r['case']} | {r['batch']} x {r['tokens']} x {r['heads']} | {cudnn} | {r['sdpa_default_ms']:.2f} | "
              f"{r['fp8_ms']:.2f} | {r['fp8_graph_ms']:.2f} | {r['fp8_kernel_only_ms']:.2f} | "
              f"{r['quantise_triton_ms']:.3f} / {r['quantise_torch_ms']:.3f} | {r['fp8_over_cudnn']:.3f} "
              f"(target <= {TARGET_RATIO}) | {r['fp8_tflops']:.0f} | {r['relative_error_vs_bf16_sdpa']:.4f} "
              f"({r['relative_error_vs_bf16_sdpa_unsmoothed_k']:.4f}) |")
    print(f"\ncompiled vs torch reference (B=1, {agreement['tokens']} tokens, {agreement['heads']} heads): "
          f"differing quantised elements {agreement['differing_elements']}, output relative error "
          f"{agreement['output_relative_error_vs_reference']:.2e}")
    if sweep:
        print("\n| tiles (BLOCK_M, BLOCK_N, warps, stages) | variant | tokens | FP8 ms | rel. error vs bf16 |")
        print("| --- | --- | ---: | ---: | ---: |")
        for r in sweep:
            mark = " (default)" if r["default"] else ""
            tiles = f"{r['block_m']}, {r['block_n']}, {r['num_warps']}, {r['num_stages']}{mark}"
            if "error" in r:
                print(f"| {tiles} | {variant_name(r)} | {r['tokens']} | failed: {r['error'][:120]} | |")
            else:
                print(f"| {tiles} | {variant_name(r)} | {r['tokens']} | {r['ms']:.2f} | "
                      f"{r['relative_error_vs_bf16_sdpa']:.4f} |")
    if forward:
        print(f"\n| WanDiT-1.3B forward, B={forward['batch']}, {forward['size']} | eager ms | CUDA-graph ms |")
        print("| --- | ---: | ---: |")
        for attention in ("bf16", "fp8"):
            graph = forward.get(f"{attention}_graph_ms")
            print(f"| --attention {attention} | {forward[f'{attention}_ms']:.1f} | "
                  f"{f'{graph:.1f}' if graph is not None else 'failed'} |")
        print(f"\nforward output, fp8 vs bf16: relative error {forward['relative_error_fp8_vs_bf16']:.4f}; "
              f"target <= {TARGET_FORWARD_MS:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="also time tiles.FP8_SWEEP_CANDIDATES")
    parser.add_argument("--sweep-tokens", type=int, nargs="+", default=[32760])
    parser.add_argument("--no-forward", action="store_true", help="skip the whole-forward section")
    parser.add_argument("--forward-batch", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here (bench/results_file.py)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("fp8_attention.py needs a CUDA GPU")
    reason = fp8_unsupported_reason(DEVICE)
    if reason is not None:
        raise SystemExit(reason)

    from bench.results_file import provenance, write_results
    header = provenance("bench/fp8_attention.py", device="cuda")
    with torch.inference_mode():
        rows = [attention_row(name, batch, tokens, heads, args.repeats) for name, batch, tokens, heads in CASES]
        agreement = agreement_section()
        sweep = [row for tokens in args.sweep_tokens for row in sweep_rows(tokens, args.repeats)] if args.sweep else []
        forward = None if args.no_forward else forward_section(args.forward_batch, args.repeats)
    print_report(rows, agreement, sweep, forward)
    if args.json:
        write_results(args.json, "bench/fp8_attention.py",
                      {"attention": rows, "agreement": agreement, "sweep": sweep, "forward": forward,
                       "inputs": "q ~ 2 N(0,1), k ~ N(0,1) + per-channel offset 2 N(0,1), v ~ N(0,1), bf16",
                       "targets": {"fp8_over_cudnn": TARGET_RATIO, "forward_ms": TARGET_FORWARD_MS}},
                      header=header)


if __name__ == "__main__":
    main()
