"""Layout refinement to target counts: numina_engine.numina.refinement."""
from __future__ import annotations

import json

import pytest
import torch

from numina_engine.numina.config import LABEL_ADDED_BASE, LABEL_REMOVED, NuminaConfig
from numina_engine.numina.refinement import (ERASED, MATCHED, NO_INSTANCE, NO_ROOM, REFINED, refine_layout,
                                             summarize_refinement)

CONFIG = NuminaConfig(mode="engine")                 # the engine's rule: additions take free pixels only
AUTHORS = NuminaConfig(mode="authors")               # the authors' rule: additions paint over


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


def disc(r: int) -> torch.Tensor:
    return torch.tensor([[dy * dy + dx * dx <= r * r for dx in range(-r, r + 1)] for dy in range(-r, r + 1)])


def brute_force_refine(labels: torch.Tensor, target: int, config: NuminaConfig) -> torch.Tensor:
    """Loop-by-loop rendering of the documented engine rules: the oracle for the vectorised version."""
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
                template = disc(config.circle_radius)
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
            paint = None
            if best is None:           # no free placement: a disc over instance pixels, erasing none
                template = paint = disc(config.circle_radius)
                th, tw = template.shape
                for y0 in range(0, frame.shape[0] - th + 1, config.placement_grid_step):
                    for x0 in range(0, frame.shape[1] - tw + 1, config.placement_grid_step):
                        trial = frame.clone()
                        window = trial[y0:y0 + th, x0:x0 + tw]
                        if bool((window[template] >= LABEL_ADDED_BASE).any()):
                            continue
                        window[template] = 0
                        if instance_count(trial) < instance_count(frame):
                            continue
                        cy, cx = y0 + th // 2, x0 + tw // 2
                        overlap = float((template & (frame[y0:y0 + th, x0:x0 + tw] > 0)).sum())
                        cost = overlap + config.lambda_center * ((cy - cy0) ** 2 + (cx - cx0) ** 2)
                        if add < len(previous):
                            cost = cost + config.lambda_temporal * (
                                (cy - previous[add][0]) ** 2 + (cx - previous[add][1]) ** 2)
                        if cost < best_cost:
                            best, best_cost = (y0, x0), cost
            if best is None:
                break
            window = frame[best[0]:best[0] + th, best[1]:best[1] + tw]
            window[template & (window <= 0) if paint is None else paint] = LABEL_ADDED_BASE + add
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
    # A frame filled by one instance: no free pixel, so discs are painted over it (issue 17); it survives.
    full = torch.ones(2, 6, 9, dtype=torch.int32)
    refined = refine_layout(full, 3, CONFIG.with_overrides(circle_radius=1))
    assert torch.equal(refined, brute_force_refine(full, 3, CONFIG.with_overrides(circle_radius=1)))
    assert all(instance_count(refined[f]) == 3 and bool((refined[f] == 1).any()) for f in range(2))
    # ... until no disc fits without covering an earlier addition: the frame stays short, with the reason.
    small = torch.ones(1, 3, 3, dtype=torch.int32)
    refined = refine_layout(small, 3, CONFIG.with_overrides(circle_radius=1))
    assert torch.equal(refined, brute_force_refine(small, 3, CONFIG.with_overrides(circle_radius=1)))
    assert instance_count(refined[0]) == 2 and bool((refined == 1).any())
    frame = summarize_refinement(small, refined, 3).frames[0]
    assert frame.status == NO_ROOM and "1 of 2 additions" in frame.reason
    # An empty frame smaller than the circle template: no placement fits, nothing is added.
    tiny = torch.zeros(1, 5, 5, dtype=torch.int32)
    assert torch.equal(refine_layout(tiny, 2, CONFIG.with_overrides(circle_radius=3)), tiny)
    assert summarize_refinement(tiny, tiny, 2).frames[0].status == NO_INSTANCE
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


def test_whole_frame_instance_gets_additions_issue_17():
    """The issue-17 repro: one instance covering the whole 16x16 frame, target 5 (demo settings)."""
    config = CONFIG.with_overrides(circle_radius=2, placement_grid_step=1)
    labels = torch.ones(5, 16, 16, dtype=torch.int32)
    refined = refine_layout(labels, 5, config)
    summary = summarize_refinement(labels, refined, 5)
    assert summary.plan_reaches_target and summary.changed and not summary.already_matched
    assert all(f.status == REFINED and f.added_labels == tuple(range(LABEL_ADDED_BASE, LABEL_ADDED_BASE + 4))
               for f in summary.frames)
    assert bool((refined == 1).any(dim=(1, 2)).all()), "the existing instance must survive"


def authors_refine_oracle(labels: torch.Tensor, target: int, config: NuminaConfig) -> torch.Tensor:
    """The authors' published algorithm, written from its description: per frame, remove the
    smallest instances; add by scanning template centres (cy, cx) from (th//2, tw//2) in steps,
    skipping boxes outside the frame, strict-less cost (first in row-major order wins), then
    paint every template pixel with the new label. Temporal term: the previous frame's additions."""
    out = labels.clone()
    previous = None
    for f in range(out.shape[0]):
        frame = out[f]
        while instance_count(frame) > target:
            ids = sorted((int((frame == i).sum()), int(i)) for i in torch.unique(frame) if int(i) > 0)
            frame[frame == ids[0][1]] = LABEL_REMOVED
        added, count, label = [], instance_count(frame), LABEL_ADDED_BASE
        while count < target:
            ids = sorted((int((frame == i).sum()), int(i)) for i in torch.unique(frame) if int(i) > 0)
            if ids:
                mask = frame == ids[0][1]
                ys, xs = torch.nonzero(mask, as_tuple=True)
                template = mask[int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
            else:
                template = disc(config.circle_radius)
            fg = torch.nonzero(frame > 0).double()
            centre = fg.mean(0).tolist() if len(fg) else [frame.shape[0] / 2.0, frame.shape[1] / 2.0]
            prev = previous[len(added)] if previous and len(added) < len(previous) else None
            th, tw = template.shape
            best, best_cost = None, float("inf")
            for cy in range(th // 2, frame.shape[0] - th // 2 + 1, config.placement_grid_step):
                for cx in range(tw // 2, frame.shape[1] - tw // 2 + 1, config.placement_grid_step):
                    y0, x0 = cy - th // 2, cx - tw // 2
                    if y0 + th > frame.shape[0] or x0 + tw > frame.shape[1]:
                        continue
                    cost = float((template & (frame[y0:y0 + th, x0:x0 + tw] > 0)).sum())
                    cost += config.lambda_center * ((cy - centre[0]) ** 2 + (cx - centre[1]) ** 2)
                    if prev is not None:
                        cost += config.lambda_temporal * ((cy - prev[0]) ** 2 + (cx - prev[1]) ** 2)
                    if cost < best_cost:
                        best, best_cost = (cy, cx), cost
            if best is None:
                break
            frame[best[0] - th // 2:best[0] - th // 2 + th, best[1] - tw // 2:best[1] - tw // 2 + tw][template] = label
            added.append(best)
            label += 1
            count += 1
        previous = added or None
    return out


@pytest.mark.parametrize("seed, shape, target, step", [
    (0, (5, 13, 17), 3, 2), (1, (4, 16, 11), 4, 1), (2, (3, 19, 23), 6, 3), (3, (4, 9, 15), 2, 1)])
def test_paint_over_matches_authors_oracle(seed, shape, target, step):
    generator = torch.Generator().manual_seed(seed)
    config = AUTHORS.with_overrides(placement_grid_step=step, circle_radius=3)
    labels = random_layout(*shape, max_instances=5, generator=generator)
    refined = refine_layout(labels, target, config)
    assert torch.equal(refined, authors_refine_oracle(labels, target, config))


def test_paint_over_takes_pixels_of_overlapping_instances():
    # A large instance at the centre, a small one in a corner: the 2x2 template's cheapest
    # centre lies inside the large instance (overlap 4 against a centre term of at least ~12).
    frame = torch.zeros(1, 12, 12, dtype=torch.int32)
    frame[0, 3:9, 3:9] = 1
    frame[0, 0:2, 0:2] = 2
    config = AUTHORS.with_overrides(placement_grid_step=1)
    refined = refine_layout(frame, 3, config)
    assert torch.equal(refined, authors_refine_oracle(frame, 3, config))
    taken = (frame > 0) & (refined >= LABEL_ADDED_BASE)
    assert bool(taken.any()), "the authors' rule paints over existing instance pixels here"
    engine = refine_layout(frame, 3, CONFIG.with_overrides(placement_grid_step=1))
    assert not bool(((frame > 0) & (engine >= LABEL_ADDED_BASE)).any())


def test_paint_over_whole_frame_instance_is_reported_truthfully():
    # Authors' rule on the issue-17 repro: the template is the whole frame, each addition erases the last.
    labels = torch.ones(2, 16, 16, dtype=torch.int32)
    refined = refine_layout(labels, 5, AUTHORS.with_overrides(circle_radius=2, placement_grid_step=1))
    assert torch.equal(refined, authors_refine_oracle(labels, 5, AUTHORS.with_overrides(placement_grid_step=1)))
    summary = summarize_refinement(labels, refined, 5)
    assert not summary.plan_reaches_target and summary.changed
    assert all(f.status == ERASED and f.refined_count == 1 and "[1, 100, 101, 102]" in f.reason
               for f in summary.frames)


def test_paint_over_erasing_an_earlier_addition_is_reported():
    # An empty frame, a one-pixel disc, a centre term twice the overlap of a pixel: the second
    # addition (template: the first) is painted right over the first.
    labels = torch.zeros(1, 9, 9, dtype=torch.int32)
    config = AUTHORS.with_overrides(circle_radius=0, placement_grid_step=1, lambda_center=2.0)
    refined = refine_layout(labels, 2, config)
    assert torch.equal(refined, authors_refine_oracle(labels, 2, config))
    frame = summarize_refinement(labels, refined, 2).frames[0]
    assert frame.added_labels == (LABEL_ADDED_BASE + 1,) and frame.status == ERASED and "[100]" in frame.reason


def test_statuses_of_matched_refined_and_short_frames():
    labels = torch.zeros(3, 10, 10, dtype=torch.int32)
    labels[0, 1:3, 1:3] = 1                      # 1 instance: matched for target 1
    labels[1, 1:3, 1:3] = 1
    labels[1, 6:8, 6:8] = 2                      # 2 instances: one removed
    labels[2] = 1                                # one whole-frame instance: matched
    refined = refine_layout(labels, 1, CONFIG)
    summary = summarize_refinement(labels, refined, 1)
    assert [f.status for f in summary.frames] == [MATCHED, REFINED, MATCHED]
    assert summary.changed and not summary.already_matched and summary.plan_reaches_target
    assert summarize_refinement(labels[:1], refined[:1], 1).already_matched
