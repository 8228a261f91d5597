"""Time countable-layout construction: the NUMINA authors' way against numina_engine's.

Inputs are synthetic attention maps at the real reference-layer grid (30 x 52 tokens per
frame): softmax(q k^T / sqrt(d)) with q, k projected from a smooth random token field, and
per-noun cross-attention maps from the same field. Rows timed:

  authors (sklearn, per frame x noun): what the authors' construct_layouts does, re-written
      here: per noun and frame, randomized SVD features, estimate_bandwidth(n_samples=1000),
      MeanShift(bin_seeding=True), DBSCAN, overlap filter.
  ours sklearn backend:   build_layouts(..., backend="sklearn") (clusters each frame once,
      scikit-learn MeanShift with every point a seed, on the CPU).
  ours torch backend:     build_layouts(..., backend="torch") on --device.
  score_heads (--heads H > 0): head scoring of [F, H, N, N] maps on --device.

Usage: python bench/layout_speed.py [--device cuda] [--frames 21] [--nouns 2] [--grid 30x52]
       [--heads 12] [--skip-authors] [--skip-sklearn] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.head_scoring import score_heads
from numina_engine.numina.layout import build_layouts, count_instances


def synthetic_maps(frames: int, heads: int, nouns: int, h: int, w: int, device: torch.device,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(self maps [frames, heads, N, N] float32, noun maps [nouns, frames, N] float32) on device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, dim, head_dim = h * w, 64, 64
    field = torch.randn(frames, dim, max(2, h // 5), max(2, w // 5), generator=g)
    tokens = F.interpolate(field, size=(h, w), mode="bicubic").flatten(2).mT.to(device)      # [F, N, dim]
    proj = torch.randn(2, heads, dim, head_dim, generator=g).to(device) / math.sqrt(dim)
    self_maps = torch.empty(frames, heads, n, n, dtype=torch.float32, device=device)
    for f in range(frames):
        q = torch.einsum("nd,hde->hne", tokens[f], proj[0]) * 2.0
        k = torch.einsum("nd,hde->hne", tokens[f], proj[1]) * 2.0
        self_maps[f] = torch.softmax(q @ k.mT / math.sqrt(head_dim), dim=-1)
    noun_keys = torch.randn(nouns, dim, generator=g).to(device)
    noun_maps = torch.softmax(torch.einsum("fnd,sd->sfn", tokens, noun_keys) * (2.0 / math.sqrt(dim)), dim=-1)
    return self_maps, noun_maps


def authors_layouts(self_maps: np.ndarray, noun_maps: np.ndarray, h: int, w: int,
                    config: NuminaConfig) -> np.ndarray:
    """The authors' per-noun, per-frame scikit-learn construction. Returns int32 [nouns, F, h, w]."""
    from sklearn.cluster import DBSCAN, MeanShift, estimate_bandwidth
    from sklearn.utils.extmath import randomized_svd

    coords = np.stack(np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij"), -1).reshape(-1, 2)
    out = np.zeros((noun_maps.shape[0], self_maps.shape[0], h, w), dtype=np.int32)
    for s in range(noun_maps.shape[0]):
        for f in range(self_maps.shape[0]):
            centred = self_maps[f] - self_maps[f].mean(axis=0, keepdims=True)
            u, sv, _ = randomized_svd(centred, n_components=3, random_state=0)
            feats = u * sv
            span = feats.max(0) - feats.min(0)
            feats = np.where(span > 1e-8, (feats - feats.min(0)) / np.where(span > 1e-8, span, 1.0), feats)
            x = np.concatenate([feats, 0.5 * coords], axis=1)
            bandwidth = estimate_bandwidth(x, quantile=config.meanshift_quantile, n_samples=min(1000, len(x)))
            clusters = MeanShift(bandwidth=bandwidth if bandwidth > 0 else 0.5, bin_seeding=True).fit_predict(x)
            ca = noun_maps[s, f].reshape(h, w)
            pts = np.argwhere(ca >= config.cross_attn_peak_ratio * ca.max())
            focus = np.zeros((h, w), dtype=bool)
            keep = DBSCAN(eps=config.dbscan_eps, min_samples=config.dbscan_min_samples).fit_predict(pts) >= 0
            focus[pts[keep, 0], pts[keep, 1]] = True
            grid = clusters.reshape(h, w)
            instance = 0
            for c in np.unique(clusters):
                region = grid == c
                if (region & focus).sum() / region.sum() >= config.semantic_overlap_tau:
                    instance += 1
                    out[s, f][region] = instance
    return out


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """(best wall time in seconds over `repeats` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


@torch.inference_mode()      # as the engine runs: KernelChoice "auto" picks the kernels on CUDA
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--nouns", type=int, default=2)
    parser.add_argument("--grid", default="30x52")
    parser.add_argument("--heads", type=int, default=12 if torch.cuda.is_available() else 0,
                        help="also time score_heads on [frames, heads, N, N] maps (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-authors", action="store_true")
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    h, w = (int(s) for s in args.grid.lower().split("x"))
    config = NuminaConfig()
    maps, noun_maps = synthetic_maps(args.frames, max(args.heads, 1), args.nouns, h, w, device)
    rows = []
    best_head = torch.zeros(args.frames, dtype=torch.int64, device=device)
    if args.heads > 0:
        seconds, (_, best_head) = timed(lambda: score_heads(maps, (h, w), config), device, args.repeats)
        rows.append((f"score_heads [{args.frames},{args.heads},{h * w},{h * w}] ({device.type})", seconds, "-"))
    self_maps = maps[torch.arange(args.frames, device=device), best_head].contiguous()
    maps = None                                                   # free the [F, H, N, N] maps

    seconds, labels = timed(lambda: build_layouts(self_maps, noun_maps, (h, w), config, backend="torch"),
                            device, args.repeats)
    rows.append((f"ours torch backend ({device.type})", seconds, count_instances(labels).float().mean().item()))
    if not args.skip_sklearn:
        seconds, ref = timed(lambda: build_layouts(self_maps, noun_maps, (h, w), config, backend="sklearn"),
                             device, 1)
        same = (ref == labels).flatten(2).all(-1).float().mean().item()
        rows.append((f"ours sklearn backend (cpu; layouts equal torch: {same:.0%})", seconds,
                     count_instances(ref).float().mean().item()))
    if not args.skip_authors:
        sm, nm = self_maps.cpu().numpy(), noun_maps.cpu().numpy()
        seconds, ref = timed(lambda: authors_layouts(sm, nm, h, w, config), torch.device("cpu"), 1)
        ref = torch.from_numpy(ref).to(device)
        same = (ref == labels).flatten(2).all(-1).float().mean().item()
        rows.append((f"authors (sklearn, per frame x noun, cpu; layouts equal torch: {same:.0%})", seconds,
                     count_instances(ref).float().mean().item()))

    device_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"layout construction: {args.frames} frames x {args.nouns} nouns, grid {h}x{w} "
          f"(N={h * w}), device {device}{device_name}")
    print(f"{'method':<72} {'seconds':>9} {'mean count':>11}")
    for name, seconds, count in rows:
        count_text = f"{count:11.2f}" if isinstance(count, float) else f"{count:>11}"
        print(f"{name:<72} {seconds:9.3f} {count_text}")


if __name__ == "__main__":
    main()
