"""CPU measurements of what the `authors` and `engine` behaviours change (README, Known differences).

    PYTHONPATH=$PWD python bench/authors_vs_engine_cpu.py [--out docs/authors_vs_engine_cpu.json]

  refinement: on random layouts (rectangles on the Wan2.1 480p token grid 30x52, 1 frame, 1-4
      instances, target found + 1..3), how often the authors' paint-over takes pixels of existing
      instances, the mean share of their area it takes, and how often it erases one;
  sigma grid: at 50 steps and shift 5, the largest sigma difference between Wan's and diffusers'
      grids and how many integer timesteps differ;
  MeanShift: on layout features of random attention maps (16x16 grid), frames whose cluster
      count changes between bin seeding + the 1,000-sample bandwidth and all-point seeding;
  head PCA: on planted-structure maps, frames whose best head is the same with svd_lowrank
      (seeded) and with the exact PCA.
Every figure is written with the settings that produced it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from numina_engine.engine.scheduler import FlowUniPCScheduler  # noqa: E402
from numina_engine.numina.config import LABEL_ADDED_BASE, NuminaConfig  # noqa: E402
from numina_engine.numina.head_scoring import score_heads  # noqa: E402
from numina_engine.numina.layout import layout_features  # noqa: E402
from numina_engine.numina.meanshift import estimate_bandwidth, mean_shift  # noqa: E402
from numina_engine.numina.refinement import refine_layout  # noqa: E402


def random_rectangles(h: int, w: int, count: int, g: torch.Generator) -> torch.Tensor:
    """int32 [1, h, w] with `count` random rectangles (later ones on top; ids 1..count)."""
    labels = torch.zeros(1, h, w, dtype=torch.int32)
    for instance in range(1, count + 1):
        rh, rw = (int(torch.randint(2, max(3, s // 3), (1,), generator=g)) for s in (h, w))
        y, x = int(torch.randint(0, h - rh + 1, (1,), generator=g)), int(torch.randint(0, w - rw + 1, (1,), generator=g))
        labels[0, y:y + rh, x:x + rw] = instance
    return labels


def refinement_figures(layouts: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    config = NuminaConfig(mode="authors")
    took = erased = 0
    shares = []
    for _ in range(layouts):
        labels = random_rectangles(30, 52, int(torch.randint(1, 5, (1,), generator=g)), g)
        found = torch.unique(labels[labels > 0]).numel()
        target = found + int(torch.randint(1, 4, (1,), generator=g))
        refined = refine_layout(labels, target, config)
        existing = labels > 0
        taken = existing & (refined >= LABEL_ADDED_BASE)
        took += bool(taken.any())
        shares.append(float(taken.sum()) / float(existing.sum()))
        erased += any(not bool((refined == i).any()) for i in torch.unique(labels[existing]).tolist())
    return {"layouts": layouts, "grid": [30, 52], "instances": "1-4 rectangles", "target": "found + 1..3",
            "seed": seed, "paint_over_takes_pixels_share_of_layouts": took / layouts,
            "mean_share_of_existing_area_taken": sum(shares) / layouts,
            "paint_over_erases_an_instance_share_of_layouts": erased / layouts,
            "engine_rule_takes_pixels": "never while free placements exist (by construction, tested)"}


def sigma_grid_figures(steps: int = 50, shift: float = 5.0) -> dict:
    wan = FlowUniPCScheduler(steps, shift=shift, sigma_grid="wan")
    diffusers = FlowUniPCScheduler(steps, shift=shift, sigma_grid="diffusers")
    differ = (wan.timesteps != diffusers.timesteps)
    return {"steps": steps, "shift": shift,
            "max_abs_sigma_difference": float((wan.sigmas - diffusers.sigmas).abs().max()),
            "sigmas_that_differ": int((wan.sigmas[:-1] != diffusers.sigmas[:-1]).sum()),
            "timesteps_that_differ": int(differ.sum()),
            "max_timestep_difference": float((wan.timesteps - diffusers.timesteps).abs().max())}


def meanshift_figures(frames: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    h = w = 16
    q, k = (torch.randn(frames, h * w, 8, generator=g) for _ in range(2))
    maps = torch.softmax(q @ k.mT * (3.0 / math.sqrt(8)), dim=-1)
    features = layout_features(maps, (h, w))
    config = NuminaConfig()
    authors = mean_shift(features, estimate_bandwidth(features, config.meanshift_quantile, 1000), bin_seeding=True)
    engine = mean_shift(features, estimate_bandwidth(features, config.meanshift_quantile))
    a, e = authors.amax(dim=1) + 1, engine.amax(dim=1) + 1
    return {"frames": frames, "grid": [h, w], "maps": "softmax(q k^T * 3/sqrt(8)), q, k ~ N(0, 1), d=8",
            "seed": seed, "frames_with_other_cluster_count": int((a != e).sum()),
            "note": "N = 256 <= 1000, so the bandwidths are equal: the difference is the bin seeding alone"}


def head_pca_figures(frames: int, heads: int, seed: int) -> dict:
    from test_head_scoring import planted_structure_maps

    maps = planted_structure_maps(frames, heads, 12, 12, torch.Generator().manual_seed(seed))
    _, exact = score_heads(maps, (12, 12), NuminaConfig(mode="engine"))
    _, lowrank = score_heads(maps, (12, 12), NuminaConfig(mode="authors", pca_seed=seed))
    return {"frames": frames, "heads": heads, "grid": [12, 12], "maps": "tests/test_head_scoring.planted_structure_maps",
            "seed": seed, "frames_with_same_best_head": int((exact == lowrank).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/authors_vs_engine_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"refinement": refinement_figures(200, seed=0), "sigma_grid": sigma_grid_figures(),
               "meanshift": meanshift_figures(40, seed=1), "head_pca": head_pca_figures(16, 8, seed=2)}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
