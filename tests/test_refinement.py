"""Layout refinement to target counts: numina_engine.numina.refinement."""
from __future__ import annotations

import json

import pytest
import torch

from numina_engine.numina.config import LABEL_ADDED_BASE, LABEL_REMOVED, NuminaConfig
from numina_engine.numina.refinement import refine_layout, summarize_refinement

CONFIG = NuminaConfig()


def random_layout(frames: int, h: int, w: int, max_instances: int, generator: torch.Generator) -> torch.Tensor:
    """int32 [frames, h, w]: up to `max_instances` random rectangles per frame (later ones on top)."""
    labels = torch.zeros(frames, h, w, dtype=torch.int32)
    for f in range(frames):
        count = int(torch.randint(0, max_instances + 1, (1,), generator=generator))
        for instance in range(1, count + 1):
            rh, rw = (int(torch.randint(1, max(2, s // 3), (1,), generator=generator)) for s in (h, w))
            y, x = int(torch.randint(0, h - rh + 1, (1,), generator=generator)), \
                int(torch.randint(0, w - rw + 1, (1,), generator=generator))
            labels[f, y:y + rh, x:x + rw] = instance
    return labels


def brute_force_refine(labels: torch.Tensor, target: int, config: NuminaConfig) -> torch.Tensor:
    """Loop-by-loop rendering of the documented rules: the oracle for the vectorised version."""
    out = labels.clone()
    previous: list[tuple[int, int]] = []
    for f in range(out.shape[0]):
        frame = out[f]
        ids = sorted(int(i) for i in torch.unique(frame) if int(i) > 0)
        ids.sort(key=lambda i: int((frame == i).sum()))            # stable: size, then id
        for i in ids[:max(0, len(ids) - target)]:
            frame[frame == i] = LABEL_REMOVED
        centres = []
        for add in range(max(0, target - len(ids))):
            present = sorted(int(i) for i in torch.unique(frame) if int(i) > 0)
            if present:
                smallest = min(present, key=lambda i: int((frame == i).sum()))
                ys, xs = torch.nonzero(frame == smallest, as_tuple=True)
                template = (frame == smallest)[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
            else:
                r = config.circle_radius
                template = torch.tensor([[dy * dy + dx * dx <= r * r for dx in range(-r, r + 1)]
                                         for dy in range(-r, r + 1)])
            th, tw = template.shape
            fg = torch.nonzero(frame > 0)
            cy0, cx0 = ((sum(float(p[0]) for p in fg) / len(fg), sum(float(p[1]) for p in fg) / len(fg))
                        if len(fg) else (frame.shape[0] / 2.0, frame.shape[1] / 2.0))
            best, best_cost = None, float("inf")
            for y0 in range(0, frame.shape[0] - th + 1, config.placement_grid_step):
                for x0 in range(0, frame.shape[1] - tw + 1, config.placement_grid_step):
                    cy, cx = y0 + th // 2, x0 + tw // 2
                    overlap = float((template & (frame[y0:y0 + th, x0:x0 + tw] > 0)).sum())
                    cost = overlap + config.lambda_center * ((cy - cy0) ** 2 + (cx - cx0) ** 2)
                    if add < len(previous):
                        cost = cost + config.lambda_temporal * (
                            (cy - previous[add][0]) ** 2 + (cx - previous[add][1]) ** 2)
                    if overlap < float(template.sum()) and cost < best_cost:
                        best, best_cost = (y0, x0), cost
            if best is None:
                break
            window = frame[best[0]:best[0] + th, best[1]:best[1] + tw]
            window[template & (window <= 0)] = LABEL_ADDED_BASE + add
            centres.append((best[0] + th // 2, best[1] + tw // 2))
        previous = centres
    return out


def instance_count(frame: torch.Tensor) -> int:
    return torch.unique(frame[frame > 0]).numel()


@pytest.mark.parametrize("seed, shape, target, step", [
    (0, (5, 13, 17), 1, 2), (1, (4, 16, 11), 3, 2), (2, (3, 19, 23), 5, 3), (3, (4, 9, 15), 0, 1)])
def test_matches_brute_force_rules(seed, shape, target, step):
    generator = torch.Generator().manual_seed(seed)
    config = CONFIG.with_overrides(placement_grid_step=step, circle_radius=3)
    labels = random_layout(*shape, max_instances=5, generator=generator)
    refined = refine_layout(labels, target, config)
    assert refined.dtype == torch.int32 and refined.shape == labels.shape
    assert torch.equal(refined, brute_force_refine(labels, target, config))


def test_removal_takes_smallest_first_and_reaches_target():
    frame = torch.zeros(12, 14, dtype=torch.int32)
    frame[0:2, 0:3] = 1      # area 6
    frame[4:7, 0:3] = 2      # area 9
    frame[0:1, 6:9] = 3      # area 3
    frame[6:10, 8:11] = 4    # area 12
    frame[10:12, 0:3] = 5    # area 6, ties with 1: the lower id goes first
    refined = refine_layout(torch.stack([frame, frame]), 2, CONFIG)
    for f in range(2):
        kept = sorted(int(i) for i in torch.unique(refined[f]) if int(i) > 0)
        assert kept == [2, 4]
        assert torch.equal(refined[f] == LABEL_REMOVED, (frame == 1) | (frame == 3) | (frame == 5))
    summary = summarize_refinement(torch.stack([frame, frame]), refined, 2)
    assert summary.plan_reaches_target
    assert [f.removed_labels for f in summary.frames] == [(1, 3, 5), (1, 3, 5)]


def test_addition_reaches_target_without_touching_existing_instances():
    generator = torch.Generator().manual_seed(7)
    labels = random_layout(4, 30, 52, max_instances=2, generator=generator)
    refined = refine_layout(labels, 4, CONFIG)
    kept = labels > 0
    assert torch.equal(refined[kept], labels[kept])
    assert all(instance_count(refined[f]) == 4 for f in range(4))
    added = refined >= LABEL_ADDED_BASE
    assert torch.equal(labels[added], torch.zeros_like(labels[added]))
    summary = summarize_refinement(labels, refined, 4)
    assert summary.plan_reaches_target
    assert [f.found_count for f in summary.frames] == [instance_count(labels[f]) for f in range(4)]


def test_added_instances_stay_put_on_static_and_drifting_layouts():
    frame = torch.zeros(20, 28, dtype=torch.int32)
    frame[8:12, 6:10] = 1
    static = refine_layout(frame.expand(6, -1, -1).contiguous(), 3, CONFIG)
    assert all(torch.equal(static[f], static[0]) for f in range(6))
    drifting = torch.stack([torch.roll(frame, shifts=f, dims=1) for f in range(6)])
    refined = refine_layout(drifting, 3, CONFIG)
    for label in (LABEL_ADDED_BASE, LABEL_ADDED_BASE + 1):
        centres = torch.stack([torch.nonzero(refined[f] == label).float().mean(0) for f in range(6)])
        steps = (centres[1:] - centres[:-1]).norm(dim=1)
        assert steps.max() <= 2.0, f"added instance {label} jumps by {steps.tolist()}"


def test_no_op_when_counts_match():
    generator = torch.Generator().manual_seed(3)
    labels = torch.zeros(3, 11, 13, dtype=torch.int32)
    for f in range(3):
        labels[f, f:f + 3, 2:5] = 4
        labels[f, 6:9, 7 + f:10 + f] = 9
    refined = refine_layout(labels, 2, CONFIG)
    assert torch.equal(refined, labels)
    summary = summarize_refinement(labels, refined, 2)
    assert summary.plan_reaches_target and all(not f.removed_labels and not f.added_labels for f in summary.frames)
    assert torch.equal(refine_layout(random_layout(2, 7, 9, 0, generator), 0, CONFIG),
                       torch.zeros(2, 7, 9, dtype=torch.int32))


def test_targets_beyond_free_space_degrade_gracefully():
    # A frame filled by one instance: no free pixel, nothing is added, the instance survives.
    full = torch.ones(2, 6, 9, dtype=torch.int32)
    assert torch.equal(refine_layout(full, 3, CONFIG), full)
    # An empty frame smaller than the circle template: no placement fits, nothing is added.
    tiny = torch.zeros(1, 5, 5, dtype=torch.int32)
    assert torch.equal(refine_layout(tiny, 2, CONFIG.with_overrides(circle_radius=3)), tiny)
    # A crowded frame (grid step 1: every free pixel reachable): additions take free pixels
    # only, fill the free space and stop short of the target.
    crowded = torch.zeros(1, 8, 8, dtype=torch.int32)
    crowded[0, :, :3] = 1
    crowded[0, :, 5:] = 2
    crowded[0, :4, 3:5] = 3
    refined = refine_layout(crowded, 30, CONFIG.with_overrides(placement_grid_step=1))
    assert torch.equal(refined[crowded > 0], crowded[crowded > 0])
    assert bool((crowded[refined >= LABEL_ADDED_BASE] == 0).all())
    assert not bool((refined == 0).any()), "free pixels left while the target is not reached"
    summary = summarize_refinement(crowded, refined, 30)
    assert not summary.plan_reaches_target
    assert 3 < summary.frames[0].refined_count < 30
    json.dumps(summary.to_dict())


def test_runs_on_input_device_and_rejects_bad_input():
    labels = torch.zeros(2, 6, 6, dtype=torch.int32)
    labels[:, 1:3, 1:3] = 1
    assert refine_layout(labels, 1, CONFIG).device == labels.device
    with pytest.raises(ValueError, match="int32"):
        refine_layout(labels.float(), 1, CONFIG)
    with pytest.raises(ValueError, match="before refinement"):
        refine_layout(labels - 1, 1, CONFIG)
    with pytest.raises(ValueError, match="before refinement"):
        refine_layout(labels + LABEL_ADDED_BASE, 1, CONFIG)
    with pytest.raises(ValueError, match="target_count"):
        refine_layout(labels, -1, CONFIG)
    with pytest.raises(ValueError, match="placement_grid_step"):
        refine_layout(labels, 2, CONFIG.with_overrides(placement_grid_step=0))
