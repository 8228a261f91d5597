"""Refine one noun's layout to its target count (NUMINA phase 2, layout refinement).

The authors' rules (H-EmbodVis/NUMINA, numina/layout.py, refine_all_layouts), frame by frame:

* Too many instances: the smallest ones (by pixel count; equal sizes: lowest id first) are
  marked LABEL_REMOVED until the count equals the target.
* Too few instances: instances are added one at a time, labelled LABEL_ADDED_BASE, +1, ...
  The template is the smallest instance present at that moment (cropped to its bounding box),
  or a disc of radius ``config.circle_radius`` when the frame has none. Candidate placements
  are the template's top-left corners ``(k * step, l * step)`` that keep it inside the frame
  (``step = config.placement_grid_step``); the chosen one minimises

      overlap + lambda_center * |c - layout centre|^2 + lambda_temporal * |c - c_prev|^2

  where ``c`` is the template centre ``(y0 + th // 2, x0 + tw // 2)``, overlap counts template
  pixels over instances (labels > 0), the layout centre is the mean position of the instance
  pixels (the frame centre ``(h / 2, w / 2)`` when there are none) and ``c_prev`` is the centre
  of the same-numbered addition in the previous frame (no temporal term when the previous
  frame added nothing or fewer). Ties go to the first candidate in row-major order.

The overlap of every candidate is one strided cross-correlation of the occupancy map with the
template (unfold + matmul). Removal handles all frames at once; the only loops are over frames
that need additions (frame t's temporal term depends on frame t-1's placements) and over the
few additions of such a frame.

Painting, `config.refine_paint_over`:

* True (the authors' rule, "authors" mode): the whole template is painted at the cheapest
  candidate, over whatever is there: a later addition may take pixels of, or erase, an
  existing instance or an earlier addition. A template larger than the frame (a disc of
  radius ``circle_radius`` in a frame with no instance) cannot be placed: the frame stops
  short (the authors' code would index outside the frame there).
* False (the engine's rule): an added instance takes only the free pixels (background or
  removed) under its template, and candidates whose template covers no free pixel are skipped,
  so every instance survives. When no such candidate exists (e.g. one instance covering the
  whole frame), the addition falls back to the disc template placed by the same cost over all
  candidates that cover no earlier addition of the frame and leave every instance at least
  one pixel; the disc is painted over the instance pixels under it. A frame where even that
  finds no candidate stops below the target.

``RefinementSummary`` reports per frame the count reached and, when it differs from the
target, why (see ``FrameRefinement.status``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LABEL_ADDED_BASE, LABEL_REMOVED, NuminaConfig

__all__ = ["refine_layout", "FrameRefinement", "RefinementSummary", "summarize_refinement"]


def refine_layout(labels: torch.Tensor, target_count: int, config: NuminaConfig) -> torch.Tensor:
    """Remove or add instances so that every frame holds `target_count` instances.

    labels: int32 [F, h, w], one noun's layout on the token grid: 0 background, 1..99 instances.
    target_count: the number of instances the prompt asks for (>= 0).
    Returns int32 [F, h, w] on the same device: kept instances unchanged, removed instances
    LABEL_REMOVED (-1), added instances LABEL_ADDED_BASE + i (100, 101, ...; i = order of
    addition within the frame). The work runs on the CPU (the maps are small and placement
    needs host-side template crops).
    """
    _check_labels(labels)
    if isinstance(target_count, bool) or not isinstance(target_count, int) or target_count < 0:
        raise ValueError(f"target_count must be an int >= 0, got {target_count!r}")
    if config.placement_grid_step < 1 or config.circle_radius < 0:
        raise ValueError(f"need placement_grid_step >= 1 and circle_radius >= 0, got "
                         f"{config.placement_grid_step} and {config.circle_radius}")
    frames = labels.detach().to("cpu")
    areas = _instance_areas(frames)                              # [F, 100]
    counts = (areas[:, 1:] > 0).sum(dim=1)                       # [F]
    refined = _remove_smallest(frames, areas, (counts - target_count).clamp_min(0))
    deficits = (target_count - counts).clamp_min(0).tolist()
    add = _add_painting_over if config.refine_paint_over else _add_into_free_pixels
    previous_centres: list[tuple[int, int]] = []
    for f, deficit in enumerate(deficits):
        previous_centres = add(refined[f], deficit, previous_centres, config) if deficit else []
    return refined.to(labels.device)


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.dtype != torch.int32:
        raise ValueError(
            "labels must be an int32 tensor [F, h, w], got "
            + (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__))
    if labels.numel() == 0:
        raise ValueError(f"labels must be non-empty, got shape {tuple(labels.shape)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= LABEL_ADDED_BASE:
        raise ValueError(
            f"labels must be 0 (background) or 1..{LABEL_ADDED_BASE - 1} (instances) before refinement, "
            f"got values in [{low}, {high}]")


def _instance_areas(frames: torch.Tensor) -> torch.Tensor:
    """Pixel count of every label 0..99 per frame: int64 [F, LABEL_ADDED_BASE]."""
    flat = frames.reshape(frames.shape[0], -1).long()
    areas = torch.zeros(frames.shape[0], LABEL_ADDED_BASE, dtype=torch.int64)
    return areas.scatter_add_(1, flat, torch.ones_like(flat))


def _remove_smallest(frames: torch.Tensor, areas: torch.Tensor, excess: torch.Tensor) -> torch.Tensor:
    """Mark the `excess[f]` smallest instances of each frame LABEL_REMOVED (all frames at once).

    frames int32 [F, h, w], areas int64 [F, 100], excess int64 [F] -> int32 [F, h, w] (a copy).
    """
    present = areas > 0
    present[:, 0] = False
    sort_key = torch.where(present, areas, torch.iinfo(torch.int64).max)
    order = torch.sort(sort_key, dim=1, stable=True).indices      # ascending size, then id
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(areas.shape[1]).expand_as(order))
    removed_id = present & (rank < excess[:, None])                # [F, 100]
    flat = frames.reshape(frames.shape[0], -1).long()
    removed_pixel = removed_id.gather(1, flat).view_as(frames)
    return torch.where(removed_pixel, torch.full_like(frames, LABEL_REMOVED), frames)


def _add_into_free_pixels(frame: torch.Tensor, count: int, previous_centres: list[tuple[int, int]],
                          config: NuminaConfig) -> list[tuple[int, int]]:
    """The engine's rule: add up to `count` instances to `frame` (int32 [h, w], edited in place),
    each on the free pixels under its template, else (no free placement) as a disc painted over
    instance pixels without covering an earlier addition or erasing an instance.

    previous_centres: centres (row, col) of the previous frame's additions, in order.
    Returns the centres of this frame's additions, in order (fewer than `count` when the
    frame runs out of room).
    """
    centres: list[tuple[int, int]] = []
    for i in range(count):
        previous = previous_centres[i] if i < len(previous_centres) else None
        template = _smallest_instance_template(frame, config.circle_radius)
        placement = _best_placement(frame, template, previous, config, needs_free_pixel=True)
        paint = None
        if placement is None:
            template = _disc(config.circle_radius)
            placement = _best_placement(frame, template, previous, config, keep_instances=True)
            paint = template
        if placement is None:
            break
        y0, x0 = placement
        th, tw = template.shape
        window = frame[y0:y0 + th, x0:x0 + tw]
        window[template & (window <= 0) if paint is None else paint] = LABEL_ADDED_BASE + i
        centres.append((y0 + th // 2, x0 + tw // 2))
    return centres


def _add_painting_over(frame: torch.Tensor, count: int, previous_centres: list[tuple[int, int]],
                       config: NuminaConfig) -> list[tuple[int, int]]:
    """The authors' rule: add `count` instances to `frame` (int32 [h, w], edited in place), each
    template painted whole at its cheapest candidate, over whatever is there.

    Same arguments and result as _add_into_free_pixels; stops early only when the template does
    not fit in the frame.
    """
    centres: list[tuple[int, int]] = []
    for i in range(count):
        previous = previous_centres[i] if i < len(previous_centres) else None
        template = _smallest_instance_template(frame, config.circle_radius)
        placement = _best_placement(frame, template, previous, config)
        if placement is None:
            break
        y0, x0 = placement
        th, tw = template.shape
        frame[y0:y0 + th, x0:x0 + tw][template] = LABEL_ADDED_BASE + i
        centres.append((y0 + th // 2, x0 + tw // 2))
    return centres


def _disc(radius: int) -> torch.Tensor:
    """bool [2r+1, 2r+1]: integer offsets within `radius` (token-grid units) of the centre."""
    offsets = torch.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2


def _smallest_instance_template(frame: torch.Tensor, circle_radius: int) -> torch.Tensor:
    """bool [th, tw]: the smallest instance (labels > 0, ties: lowest id) cropped to its
    bounding box, or a disc of radius `circle_radius` (token-grid units) when there is none."""
    positive = frame[frame > 0].long()
    if positive.numel() == 0:
        return _disc(circle_radius)
    areas = torch.bincount(positive)
    areas[areas == 0] = torch.iinfo(torch.int64).max
    smallest = int(torch.argmin(areas))
    mask = frame == smallest
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return mask[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]


def _best_placement(frame: torch.Tensor, template: torch.Tensor, previous: tuple[int, int] | None,
                    config: NuminaConfig, *, needs_free_pixel: bool = False,
                    keep_instances: bool = False) -> tuple[int, int] | None:
    """Top-left (row, col) of the cheapest candidate placement of `template` (bool [th, tw]) in
    `frame` (int32 [h, w]), or None when no candidate qualifies (or the template does not fit).

    needs_free_pixel: only candidates covering at least one free pixel (label <= 0).
    keep_instances: only candidates covering no added instance (label >= LABEL_ADDED_BASE) and
    leaving every instance at least one pixel outside the template.
    """
    h, w = frame.shape
    th, tw = template.shape
    if th > h or tw > w:
        return None
    step = config.placement_grid_step
    ny, nx = (h - th) // step + 1, (w - tw) // step + 1
    flat_template = template.reshape(1, -1).to(torch.float64)

    def covered(mask: torch.Tensor) -> torch.Tensor:
        """Template pixels over `mask` (bool [k, h, w]) for every candidate: float64 [k, ny, nx]."""
        windows = F.unfold(mask.to(torch.float64)[:, None], (th, tw), stride=step)    # [k, th*tw, ny*nx]
        return (flat_template @ windows).view(-1, ny, nx)

    overlap = covered((frame > 0)[None])[0]
    top = torch.arange(ny, dtype=torch.float64) * step
    left = torch.arange(nx, dtype=torch.float64) * step
    centre_y, centre_x = top + th // 2, left + tw // 2
    layout_y, layout_x = _layout_centre(frame)
    cost = overlap + config.lambda_center * (
        (centre_y - layout_y)[:, None] ** 2 + (centre_x - layout_x)[None, :] ** 2)
    if previous is not None:
        cost = cost + config.lambda_temporal * (
            (centre_y - previous[0])[:, None] ** 2 + (centre_x - previous[1])[None, :] ** 2)
    if needs_free_pixel:
        cost = torch.where(overlap < float(template.sum()), cost, torch.inf)
    if keep_instances:
        ids = torch.unique(frame[frame > 0])
        if ids.numel():
            masks = frame[None] == ids[:, None, None]                                  # [k, h, w]
            under = covered(masks)
            area = masks.flatten(1).sum(dim=1).to(torch.float64)[:, None, None]
            added = (ids >= LABEL_ADDED_BASE)[:, None, None]
            bad = ((under >= area) | (added & (under > 0))).any(dim=0)
            cost = torch.where(bad, torch.inf, cost)
    best = int(torch.argmin(cost))
    if not bool(torch.isfinite(cost.flatten()[best])):
        return None
    return best // nx * step, best % nx * step


def _layout_centre(frame: torch.Tensor) -> tuple[float, float]:
    """Mean (row, col) of the instance pixels of `frame`, or (h / 2, w / 2) without any."""
    coords = torch.nonzero(frame > 0).to(torch.float64)
    if coords.numel() == 0:
        return frame.shape[0] / 2.0, frame.shape[1] / 2.0
    centre = coords.mean(dim=0)
    return float(centre[0]), float(centre[1])


# FrameRefinement.status values
MATCHED = "matched"                      # the frame already held the target count: nothing changed
REFINED = "refined"                      # instances removed or added: the frame now holds the target
NO_ROOM = "no_room_to_add"               # additions could not all be placed
NO_INSTANCE = "no_instance_found"        # nothing found and not even a disc could be placed
ERASED = "instances_erased"              # paint-over (authors' rule) erased instances or earlier additions


@dataclass(frozen=True)
class FrameRefinement:
    """What refinement did to one frame: instance counts before/after, the labels involved, and
    `status` (one of the constants above) with `reason`, a sentence ("" when the target was met)."""
    found_count: int
    refined_count: int
    removed_labels: tuple[int, ...]
    added_labels: tuple[int, ...]
    status: str
    reason: str = ""


@dataclass(frozen=True)
class RefinementSummary:
    """Per-frame account of one noun's refinement, for report.json."""
    target_count: int
    frames: tuple[FrameRefinement, ...]

    @property
    def plan_reaches_target(self) -> bool:
        """True when the refined plan (not the video) has exactly `target_count` instances in every frame."""
        return all(frame.refined_count == self.target_count for frame in self.frames)

    @property
    def already_matched(self) -> bool:
        """True when every frame held `target_count` instances before refinement."""
        return all(frame.status == MATCHED for frame in self.frames)

    @property
    def changed(self) -> bool:
        """True when some frame got an instance removed or added (there is something to modulate)."""
        return any(frame.removed_labels or frame.added_labels for frame in self.frames)

    def to_dict(self) -> dict:
        """JSON-ready form: {"target_count", "plan_reaches_target", "frames": [{found_count, ..., status, reason}]}."""
        return {
            "target_count": self.target_count,
            "plan_reaches_target": self.plan_reaches_target,
            "frames": [
                {"found_count": f.found_count, "refined_count": f.refined_count,
                 "removed_labels": list(f.removed_labels), "added_labels": list(f.added_labels),
                 "status": f.status, "reason": f.reason}
                for f in self.frames],
        }


def summarize_refinement(labels: torch.Tensor, refined: torch.Tensor, target_count: int) -> RefinementSummary:
    """Compare a layout (int32 [F, h, w], before refinement) with its refinement (same shape)."""
    if labels.shape != refined.shape or labels.dim() != 3:
        raise ValueError(f"labels and refined must both be [F, h, w], got {tuple(labels.shape)} "
                         f"and {tuple(refined.shape)}")
    frames = []
    for before, after in zip(labels.cpu(), refined.cpu()):
        found = {int(i) for i in torch.unique(before[before > 0])}
        removed = {int(i) for i in torch.unique(before[after == LABEL_REMOVED])} & found
        after_ids = {int(i) for i in torch.unique(after[after > 0])}
        added = sorted(i for i in after_ids if i >= LABEL_ADDED_BASE)
        erased = sorted(found - removed - after_ids)            # existing instances painted over entirely
        if added:                                               # and additions a later one painted over
            erased += sorted(set(range(LABEL_ADDED_BASE, added[-1] + 1)) - set(added))
        status, reason = _frame_outcome(len(found), len(after_ids), len(removed), added, erased, target_count)
        frames.append(FrameRefinement(found_count=len(found), refined_count=len(after_ids),
                                      removed_labels=tuple(sorted(removed)), added_labels=tuple(added),
                                      status=status, reason=reason))
    return RefinementSummary(target_count=target_count, frames=tuple(frames))


def _frame_outcome(found: int, refined: int, removed: int, added: list[int], erased: list[int],
                   target: int) -> tuple[str, str]:
    """(status, reason) of one frame; see the status constants."""
    if refined == target:
        return (MATCHED, "") if not removed and not added else (REFINED, "")
    if erased:
        return ERASED, (f"painting the additions over existing pixels erased instance(s) {erased}: "
                        f"{refined} of {target} instances remain")
    wanted = target - (found - removed)
    if found == 0 and not added:
        return NO_INSTANCE, (f"no instance found and none of the {wanted} additions could be placed "
                             "(the disc template is larger than the frame)")
    return NO_ROOM, f"no room to add: {len(added)} of {wanted} additions placed, {refined} of {target} instances"
