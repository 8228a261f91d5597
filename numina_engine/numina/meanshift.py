"""Flat-kernel mean shift in torch, batched over frames, equal to scikit-learn's defaults.

`mean_shift` reproduces `sklearn.cluster.MeanShift(bandwidth=bw)` (flat kernel, every point a
seed, max_iter 300, per-seed stop when the mean moves by at most 1e-3 * bandwidth, seeds whose
last window is empty are dropped, centres ranked by (intensity, coordinates) descending and
de-duplicated greedily with the bandwidth radius, every point labelled with its nearest
centre). All seeds of all frames climb at once; each step is one batched distance matmul.
Labels are numbered like scikit-learn's (0 = the most intense kept centre), so results agree
exactly except where float rounding decides a distance tie.

`estimate_bandwidth` reproduces `sklearn.cluster.estimate_bandwidth(X, quantile=q)` with its
defaults (n_samples=None: all points are used, so random_state plays no part): the mean over
points of the distance to their k-th nearest point, itself included, k = max(1, int(n * q)).
"""
from __future__ import annotations

import numpy as np
import torch

MAX_ITER = 300
STOP_FRACTION = 1e-3              # a seed stops when its mean moves by <= STOP_FRACTION * bandwidth
DISTANCE_CHUNK_BYTES = 1 << 28    # float64 pairwise differences held at once in estimate_bandwidth


def _as_frames(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """features [n, d] or [F, n, d] -> ([F, n, d] float64, whether a frame axis was given)."""
    if not isinstance(features, torch.Tensor) or features.dim() not in (2, 3):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor [n, d] or [F, n, d], got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if features.shape[-2] < 1 or features.shape[-1] < 1:
        raise ValueError(f"features need at least one point and one dimension, got {tuple(features.shape)}")
    batched = features.dim() == 3
    return (features if batched else features[None]).to(torch.float64), batched


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [F, m, n] float64 between a [F, m, d] and b [F, n, d]."""
    cross = a @ b.mT
    return (a.square().sum(-1)[..., :, None] + b.square().sum(-1)[..., None, :] - 2.0 * cross).clamp_min(0.0)


def estimate_bandwidth(features: torch.Tensor, quantile: float = 0.3) -> torch.Tensor:
    """scikit-learn's bandwidth estimate, per frame.

    features: [n, d] or [F, n, d] float. Returns a float64 tensor, [] or [F], on the features'
    device: mean over points of the distance to the k-th nearest point (itself counted),
    k = max(1, int(n * quantile)). Distances are taken from coordinate differences, as sklearn's
    trees do, in chunks of frames bounded by DISTANCE_CHUNK_BYTES.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    x, batched = _as_frames(features)
    frames, n, d = x.shape
    k = max(1, int(n * quantile))
    per_chunk = max(1, DISTANCE_CHUNK_BYTES // (n * n * d * 8))
    parts = []
    for start in range(0, frames, per_chunk):
        chunk = x[start:start + per_chunk]
        dist = (chunk[:, :, None, :] - chunk[:, None, :, :]).square().sum(-1).sqrt()
        parts.append(dist.kthvalue(k, dim=-1).values.mean(dim=-1))
    bandwidth = torch.cat(parts)
    return bandwidth if batched else bandwidth[0]


def _bandwidths(bandwidth: float | torch.Tensor, frames: int, device: torch.device) -> torch.Tensor:
    bw = torch.as_tensor(bandwidth, dtype=torch.float64, device=device).reshape(-1)
    if bw.numel() == 1:
        bw = bw.expand(frames)
    if bw.numel() != frames:
        raise ValueError(f"bandwidth must be a scalar or one value per frame ({frames}), got {bw.numel()}")
    if not bool((bw > 0).all()):
        raise ValueError(f"bandwidth must be > 0, got {bw.tolist()}")
    return bw


def _climb(x: torch.Tensor, bw: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hill-climb every point as a seed. x [F, n, d], bw [F].

    Returns (centres [F, n, d], intensity [F, n] int64: points in the last window, 0 = dropped).
    """
    radius2 = bw.square()[:, None, None]
    stop = (STOP_FRACTION * bw)[:, None]
    means = x.clone()
    intensity = torch.zeros(x.shape[:2], dtype=torch.int64, device=x.device)
    active = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    for iteration in range(max_iter + 1):
        window = _squared_distances(means, x) <= radius2                    # [F, seeds, n]
        count = window.sum(-1)
        shifted = (window.to(x.dtype) @ x) / count.clamp_min(1)[..., None]
        empty = count == 0
        moved = (shifted - means).norm(dim=-1)
        update = active & ~empty
        means = torch.where(update[..., None], shifted, means)
        intensity = torch.where(active, count, intensity)
        finished = empty | (moved <= stop) | (iteration == max_iter)
        active = active & ~finished
        if not bool(active.any()):
            break
    return means, intensity


def _lexicographic_descending(intensity: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Order [F, n] sorting seeds by (intensity, c0, c1, ...) descending, like sklearn's sorted()."""
    order = torch.arange(intensity.shape[-1], device=intensity.device).expand_as(intensity)
    keys = [centres[..., j] for j in reversed(range(centres.shape[-1]))] + [intensity.to(centres.dtype)]
    for key in keys:
        order = order.gather(-1, key.gather(-1, order).sort(dim=-1, descending=True, stable=True).indices)
    return order


def _greedy_unique(centres: torch.Tensor, valid: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """Keep mask [F, S] of the greedy bandwidth-radius de-duplication of ranked centres [F, S, d].

    A centre is kept iff it is valid and no kept centre ranked before it lies within the
    bandwidth. The triangular system is solved by fixed-point iteration (exact once stable).
    """
    near = _squared_distances(centres, centres) <= bw.square()[:, None, None]
    earlier = torch.ones(near.shape[-2:], dtype=torch.bool, device=near.device).tril(-1)
    suppressors = (near & earlier).to(torch.float32)
    keep = valid
    while True:
        suppressed = (suppressors @ keep.to(torch.float32)[..., None])[..., 0] > 0
        updated = valid & ~suppressed
        if torch.equal(updated, keep):
            return keep
        keep = updated


def mean_shift(features: torch.Tensor, bandwidth: float | torch.Tensor,
               max_iter: int = MAX_ITER) -> torch.Tensor:
    """Mean shift clustering, equal to sklearn.cluster.MeanShift(bandwidth=bandwidth).fit_predict.

    features: [n, d] or [F, n, d] float (computed in float64). bandwidth: > 0, a scalar or one
    value per frame ([F] tensor or sequence). Returns labels int64, [n] or [F, n], on the
    features' device: 0..K-1 per frame, numbered by descending centre intensity like sklearn.
    """
    x, batched = _as_frames(features)
    bw = _bandwidths(bandwidth, x.shape[0], x.device)
    centres, intensity = _climb(x, bw, max_iter)
    order = _lexicographic_descending(intensity, centres)
    ranked = centres.gather(1, order[..., None].expand_as(centres))
    keep = _greedy_unique(ranked, intensity.gather(1, order) > 0, bw)
    distance = _squared_distances(x, ranked).masked_fill(~keep[:, None, :], float("inf"))
    nearest = distance.argmin(dim=-1)                                      # rank of the centre
    labels = (keep.cumsum(dim=-1) - 1).gather(1, nearest)
    return labels if batched else labels[0]


def mean_shift_sklearn(features: torch.Tensor | np.ndarray, bandwidth: float | torch.Tensor) -> torch.Tensor:
    """Reference: scikit-learn's MeanShift(bandwidth=...) on the CPU, frame by frame.

    Same arguments and result layout as mean_shift (labels on the CPU).
    """
    from sklearn.cluster import MeanShift

    x, batched = _as_frames(torch.as_tensor(features))
    bw = _bandwidths(bandwidth, x.shape[0], torch.device("cpu"))
    frames = x.detach().cpu().numpy()
    labels = torch.stack([torch.from_numpy(MeanShift(bandwidth=float(b)).fit_predict(frame)).to(torch.int64)
                          for frame, b in zip(frames, bw.tolist())])
    return labels if batched else labels[0]


def estimate_bandwidth_sklearn(features: torch.Tensor | np.ndarray, quantile: float = 0.3) -> torch.Tensor:
    """Reference: sklearn.cluster.estimate_bandwidth(X, quantile=quantile) per frame (CPU, float64)."""
    from sklearn.cluster import estimate_bandwidth as sklearn_estimate

    x, batched = _as_frames(torch.as_tensor(features))
    values = torch.tensor([sklearn_estimate(frame, quantile=quantile) for frame in x.detach().cpu().numpy()],
                          dtype=torch.float64)
    return values if batched else values[0]
