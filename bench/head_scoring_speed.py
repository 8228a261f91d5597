"""Speed and accuracy of head scoring (numina/head_scoring.py) at the real Wan2.1-1.3B shape, on CUDA.

Maps: [F, H, N, N] float32 synthetic within-frame self-attention maps (default F=21 frames,
H=12 heads, 30x52 grid: N=1560, 2.45 GB), heads of five kinds per frame:
  planted (heads 0-3): attention within 2-4 Gaussian blobs (strength 1..6 per head) + locality
      + noise + an attention sink, like the structured heads NUMINA looks for;
  field (4-6): softmax(q k^T) with q, k projected from a smooth random token field;
  low-rank (7-8): random 6-dimensional q, k;
  local (9-10): Gaussian window around each token (+ noise): slow spectral decay, near ties;
  iid (11): i.i.d. Gaussian logits: flat spectrum, components barely determined.

Reports (JSON on stdout, and in --out if given):
  timing: CUDA-event medians of score_heads and of principal_components for several
      (block, bf16 iterations, exact iterations) settings, and of its stages;
  sync check: score_heads under torch.cuda.set_sync_debug_mode("error");
  memory: extra peak memory of one score_heads call;
  accuracy: against exact float64 components (eigh of C C^T on the GPU, checked against the CPU
      SVD oracle score_heads_reference on two maps) for the first --reference-frames frames:
      max relative score error and max gray error per head kind, best head per frame.

Run: python -m bench.head_scoring_speed [--frames 21] [--heads 12] [--grid 30 52]
     [--repeats 20] [--reference-frames 21] [--out report.json]
"""
from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch
import torch.nn.functional as F

from bench.timing import median_ms
from numina_engine.kernels.centre_rows import centre_rows
from numina_engine.kernels.dispatch import KernelChoice
from numina_engine.numina import head_scoring as hs
from numina_engine.numina.config import NuminaConfig

KERNELS = KernelChoice("auto")   # "reference" if the centring kernel fails its probe (recorded in the report)
HEAD_KINDS = ("planted",) * 4 + ("field",) * 3 + ("low-rank",) * 2 + ("local",) * 2 + ("iid",)
SETTINGS = [  # (block, bf16 iterations, exact float32 iterations)
    (32, 5, 1), (32, 4, 1), (32, 6, 1), (32, 7, 1), (48, 4, 1), (48, 5, 1), (24, 5, 1), (32, 5, 0)]


def _positions(h: int, w: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w).reshape(-1)
    return torch.stack([rows, cols], dim=-1)                                             # [N, 2] tokens


def planted_logits(count: int, h: int, w: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """[count, N, N] logits: strength * blob affinity (2-4 blobs) + locality + noise + sink."""
    side = max(h, w)
    position = _positions(h, w, device) / side
    slots = 4
    centres = torch.rand(count, slots, 2, generator=g, device=device) * torch.tensor([h, w], device=device) / side
    radii = 0.08 + 0.15 * torch.rand(count, slots, generator=g, device=device)
    active = (torch.arange(slots, device=device) < torch.randint(2, 5, (count, 1), generator=g, device=device))
    member = torch.exp(-torch.cdist(position.expand(count, -1, -1), centres).square() / radii[:, None, :].square())
    member = member * active[:, None, :]
    strength = 1.0 + 5.0 * torch.rand(count, 1, 1, generator=g, device=device)
    logits = strength * (member @ member.mT) - 6.0 * torch.cdist(position, position).square()
    logits += 0.5 * torch.randn(logits.shape, generator=g, device=device)
    logits[..., 0] += 2.0
    return logits


def field_logits(count: int, h: int, w: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """[count, N, N] logits q k^T / sqrt(d) from a smooth random token field (64 channels)."""
    dim = 64
    field = torch.randn(count, dim, max(2, h // 5), max(2, w // 5), generator=g, device=device)
    tokens = F.interpolate(field, size=(h, w), mode="bicubic").flatten(2).mT               # [count, N, dim]
    proj = torch.randn(2, count, dim, dim, generator=g, device=device) / math.sqrt(dim)
    q, k = 2.0 * tokens @ proj[0], 2.0 * tokens @ proj[1]
    return q @ k.mT / math.sqrt(dim)


def low_rank_logits(count: int, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    q, k = (torch.randn(count, n, 6, generator=g, device=device) for _ in range(2))
    return q @ k.mT * (3.0 / math.sqrt(6))


def local_logits(count: int, h: int, w: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    position = _positions(h, w, device)
    width = 2.0 + 2.0 * torch.rand(count, 1, 1, generator=g, device=device)
    logits = -torch.cdist(position, position).square() / (2 * width.square())
    return logits + 0.5 * torch.randn(logits.shape, generator=g, device=device)


def synthetic_maps(frames: int, heads: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """(maps [frames, heads, N, N] float32 softmax rows on device, kind of each head)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = h * w
    kinds = [HEAD_KINDS[i % len(HEAD_KINDS)] for i in range(heads)]
    maps = torch.empty(frames, heads, n, n, device=device)
    for kind in sorted(set(kinds)):
        index = [i for i, k in enumerate(kinds) if k == kind]
        count = frames * len(index)
        if kind == "planted":
            logits = planted_logits(count, h, w, g, device)
        elif kind == "field":
            logits = field_logits(count, h, w, g, device)
        elif kind == "low-rank":
            logits = low_rank_logits(count, n, g, device)
        elif kind == "local":
            logits = local_logits(count, h, w, g, device)
        else:
            logits = 2.0 * torch.randn(count, n, n, generator=g, device=device)
        maps[:, index] = torch.softmax(logits, dim=-1).reshape(frames, len(index), n, n)
        del logits
    return maps, kinds


def exact_components_eigh(maps: torch.Tensor, chunk: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """(components [B, N, 3] float64 by eigh of C C^T, singular values [B, 33]) of maps [B, N, N]."""
    components, singular = [], []
    for start in range(0, maps.shape[0], chunk):
        centred = maps[start:start + chunk].double()
        centred = centred - centred.mean(dim=-2, keepdim=True)
        values, vectors = torch.linalg.eigh(centred @ centred.mT)                        # ascending
        del centred
        values, vectors = values.flip(-1).clamp_min(0).sqrt(), vectors.flip(-1)
        components.append(hs._fix_signs(vectors[..., :3] * values[:, None, :3]))
        singular.append(values[:, :33])
        del vectors
    return torch.cat(components), torch.cat(singular)


def scores_of(components: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gray = hs.gray_from_components(components)
    return hs.structure_scores(gray, grid_hw, config).to(torch.float32), gray


def section(report: dict, name: str, fn) -> None:
    """Run one part of the benchmark; a failure is recorded and does not stop the others."""
    started = time.time()
    try:
        report[name] = fn()
    except Exception:                                                                # noqa: BLE001
        report[name] = {"error": traceback.format_exc(limit=6)}
    report.setdefault("section_seconds", {})[name] = round(time.time() - started, 2)


def best_heads_with(maps: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig, block: int,
                    iterations: int, exact_iterations: int) -> torch.Tensor:
    """score_heads' best head [F] for maps [F, H, N, N], with principal_components' settings given."""
    frames, heads, n, _ = maps.shape
    components = hs.principal_components(maps, iterations=iterations, block=block,
                                         exact_iterations=exact_iterations, kernels=KERNELS).reshape(-1, n, 3)
    return scores_of(components, grid_hw, config)[0].reshape(frames, heads).argmax(-1)


def timing_report(maps: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig, repeats: int) -> dict:
    """CUDA-event medians (ms) of score_heads (default setting) and of the same computation
    (best_heads_with) for each of SETTINGS."""
    out = {"score_heads_ms": median_ms(lambda: hs.score_heads(maps, grid_hw, config, kernels=KERNELS), repeats)}
    torch.cuda.synchronize()
    started = time.perf_counter()
    hs.score_heads(maps, grid_hw, config, kernels=KERNELS)
    out["score_heads_host_return_ms"] = 1e3 * (time.perf_counter() - started)           # launches, no sync
    torch.cuda.synchronize()
    out["score_heads_wall_ms"] = 1e3 * (time.perf_counter() - started)
    for block, iterations, exact in SETTINGS:
        out[f"score_heads equivalent k={block} bf16={iterations} exact={exact} ms"] = median_ms(
            lambda: best_heads_with(maps, grid_hw, config, block, iterations, exact), repeats)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    hs.score_heads(maps, grid_hw, config, kernels=KERNELS)
    out["score_heads_extra_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    return out


def stage_report(maps: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig, repeats: int) -> dict:
    """CUDA-event medians (ms) of the stages of principal_components at the default block."""
    n, k = maps.shape[-1], hs.SUBSPACE_BLOCK
    flat = maps.reshape(-1, n, n)
    mean = flat[:, ::max(1, n // hs.MEAN_SAMPLE_ROWS)].mean(dim=-2, keepdim=True)
    copy = hs._centred_copy(flat, hs.ITERATION_DTYPE, KERNELS)
    basis16 = torch.randn(flat.shape[0], n, k, device=flat.device).to(hs.ITERATION_DTYPE)
    product = copy.mT @ hs._centred(copy @ basis16)
    basis32 = hs._orthonormalize(product, 2).float()
    projected = hs._exact_product(flat, basis32).double()
    gram = projected.mT @ projected
    components = hs._fix_signs(projected @ hs.top_eigenvectors(gram, 3))
    out = {
        "sampled mean ms": median_ms(lambda: flat[:, ::max(1, n // hs.MEAN_SAMPLE_ROWS)].mean(dim=-2, keepdim=True),
                                     repeats),
        "full mean ms (not used)": median_ms(lambda: flat.mean(dim=-2, keepdim=True), repeats),
        "centre to bf16, Triton ms": median_ms(lambda: centre_rows(flat, mean, hs.ITERATION_DTYPE), repeats),
        "centre to bf16, torch.sub ms (not used)": median_ms(lambda: torch.sub(flat, mean, out=copy), repeats),
        "bf16 iteration products ms": median_ms(lambda: copy.mT @ hs._centred(copy @ basis16), repeats),
        "orthonormalize 1 pass ms": median_ms(lambda: hs._orthonormalize(product, 1), repeats),
        "orthonormalize 2 passes ms": median_ms(lambda: hs._orthonormalize(product, 2), repeats),
        "exact C Q ms": median_ms(lambda: hs._exact_product(flat, basis32), repeats),
        "exact C^T P ms": median_ms(lambda: hs._exact_transposed_product(flat, basis32), repeats),
        "top_eigenvectors ms": median_ms(lambda: hs.top_eigenvectors(gram, 3), repeats),
        "gray + scores ms": median_ms(lambda: scores_of(components, grid_hw, config), repeats),
    }
    torch.cuda.synchronize()
    started = time.perf_counter()
    hs.top_eigenvectors(gram, 3)
    out["top_eigenvectors host launch ms"] = 1e3 * (time.perf_counter() - started)
    torch.cuda.synchronize()
    return out


def sync_report(maps: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig) -> dict:
    """score_heads under set_sync_debug_mode("error"): raises if anything synchronises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hs.score_heads(maps, grid_hw, config, kernels=KERNELS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return {"host_syncs": "none (set_sync_debug_mode('error') raised nothing)"}


def centring_probe() -> dict:
    """Check the Triton centring kernel on a small input; if it fails, fall back to torch.sub for
    the rest of the run (recorded), so that timings and accuracy still come back."""
    g = torch.Generator(device="cuda").manual_seed(1)
    maps = torch.rand(3, 1560, 1560, generator=g, device="cuda")
    mean = torch.rand(3, 1, 1560, generator=g, device="cuda")
    try:
        out = centre_rows(maps, mean, torch.bfloat16)
        error = float((out.float() - (maps - mean).to(torch.bfloat16).float()).abs().max())
        return {"backend": "triton", "max_abs_diff_vs_torch": error}
    except Exception:                                                                # noqa: BLE001
        global KERNELS
        KERNELS = KernelChoice("reference")
        return {"backend": "torch.sub (triton failed)", "error": traceback.format_exc(limit=4)}


def accuracy_report(maps: torch.Tensor, kinds: list[str], grid_hw: tuple[int, int], config: NuminaConfig,
                    frames: int) -> dict:
    """Errors of principal_components (each of SETTINGS) and score_heads against exact components,
    on the first `frames` frames of maps [F, H, N, N]."""
    heads, n = maps.shape[1], maps.shape[-1]
    subset = maps[:frames].reshape(-1, n, n)
    exact, singular = exact_components_eigh(subset)
    ref_scores, ref_gray = scores_of(exact, grid_hw, config)
    ref_scores = ref_scores.reshape(frames, heads)
    out: dict = {"frames": frames}
    oracle_heads = [kinds.index("planted"), kinds.index("local")]                 # eigh vs the CPU SVD oracle
    oracle, _ = hs.score_heads_reference(maps[:1, oracle_heads].cpu(), grid_hw, config)
    out["eigh_vs_svd_oracle_rel"] = float(((ref_scores[0, oracle_heads].cpu() - oracle[0]).abs()
                                           / oracle[0].abs()).max())
    kind_index = torch.tensor([HEAD_KINDS.index(kind) for kind in kinds]).repeat(frames)
    masks = {kind: kind_index == HEAD_KINDS.index(kind) for kind in dict.fromkeys(kinds)}
    ratios = torch.stack([singular[:, 1] / singular[:, 0], singular[:, 3] / singular[:, 2],
                          singular[:, -1] / singular[:, 2]], dim=-1).cpu()
    out["spectrum median (s2/s1, s4/s3, s33/s3)"] = {
        kind: [round(float(x), 3) for x in ratios[mask].median(dim=0).values] for kind, mask in masks.items()}
    out["reference_best_head"] = ref_scores.argmax(-1).tolist()
    for block, iterations, exact_iterations in SETTINGS:
        components = hs.principal_components(subset, iterations=iterations, block=block,
                                             exact_iterations=exact_iterations, kernels=KERNELS)
        scores, gray = scores_of(components, grid_hw, config)
        scores = scores.reshape(frames, heads)
        rel = ((scores - ref_scores).abs() / ref_scores.abs()).reshape(-1).cpu()
        gray_err = (gray - ref_gray).abs().amax(-1).cpu()
        out[f"k={block} bf16={iterations} exact={exact_iterations}"] = {
            "same_best_head": bool(torch.equal(scores.argmax(-1), ref_scores.argmax(-1))),
            "max_rel_score_err": {kind: float(rel[mask].max()) for kind, mask in masks.items()},
            "max_gray_err": {kind: float(gray_err[mask].max()) for kind, mask in masks.items()},
        }
    full_scores, full_best = hs.score_heads(maps, grid_hw, config, kernels=KERNELS)
    out["score_heads_same_best_head"] = bool(torch.equal(full_best[:frames], ref_scores.argmax(-1)))
    out["score_heads_max_rel_score_err"] = float(((full_scores[:frames] - ref_scores).abs()
                                                  / ref_scores.abs()).max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--grid", type=int, nargs=2, default=(30, 52))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reference-frames", type=int, default=21)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("head_scoring_speed needs CUDA")
    grid_hw = tuple(args.grid)
    config = NuminaConfig()
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "shape": [args.frames, args.heads, grid_hw[0] * grid_hw[1], grid_hw[0] * grid_hw[1]],
                    "defaults": {"block": hs.SUBSPACE_BLOCK, "iterations": hs.SUBSPACE_ITERATIONS,
                                 "exact_iterations": hs.EXACT_ITERATIONS}}
    section(report, "centring", centring_probe)
    maps, kinds = synthetic_maps(args.frames, args.heads, *grid_hw, torch.device("cuda"))
    section(report, "timing", lambda: timing_report(maps, grid_hw, config, args.repeats))
    section(report, "stages", lambda: stage_report(maps, grid_hw, config, args.repeats))
    section(report, "sync_check", lambda: sync_report(maps, grid_hw, config))
    section(report, "accuracy", lambda: accuracy_report(maps, kinds, grid_hw, config,
                                                        min(args.reference_frames, args.frames)))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
