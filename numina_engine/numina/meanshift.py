"""Flat-kernel mean shift in torch, batched over frames, equal to scikit-learn's defaults.

`mean_shift` reproduces `sklearn.cluster.MeanShift(bandwidth=bw)` (flat kernel, every point a
seed, max_iter 300, per-seed stop when the mean moves by at most 1e-3 * bandwidth, seeds whose
last window is empty are dropped, centres ranked by (intensity, coordinates) descending and
de-duplicated greedily with the bandwidth radius, every point labelled with its nearest
centre). All seeds of all frames climb at once; each step is one batched distance matmul.
Labels are numbered like scikit-learn's (0 = the most intense kept centre), so results agree
exactly except where float rounding decides a distance tie.

With `bin_seeding=True` it reproduces `MeanShift(bandwidth=bw, bin_seeding=True)` (the authors'
setting): the seeds are the distinct bins round(x / bw) of the points (min_bin_freq 1) scaled back
by bw, or every point when each point has its own bin (scikit-learn's fallback); seeds whose first
window is empty are dropped like the others. Binning, climbing and de-duplication stay batched.

`estimate_bandwidth` reproduces `sklearn.cluster.estimate_bandwidth(X, quantile=q,
n_samples=m, random_state=0)`: with m given, the points are first subsampled to
`np.random.RandomState(0).permutation(n)[:m]` (the authors use m = min(1000, n)); then the mean
over the (sub)sampled points of the distance to their k-th nearest (sub)sampled point, itself
included, k = max(1, int(m * q)). With m = None all points are used (random_state plays no part).
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


def subsample_index(n: int, n_samples: int) -> np.ndarray:
    """Indices scikit-learn's estimate_bandwidth(..., n_samples, random_state=0) keeps of n points."""
    return np.random.RandomState(0).permutation(n)[:n_samples]


def estimate_bandwidth(features: torch.Tensor, quantile: float = 0.3, n_samples: int | None = None) -> torch.Tensor:
    """scikit-learn's bandwidth estimate, per frame.

    features: [n, d] or [F, n, d] float. n_samples: None (all points) or >= 1, the subsample size
    (same subsample in every frame, see subsample_index). Returns a float64 tensor, [] or [F], on
    the features' device: mean over the sampled points of the distance to the k-th nearest sampled
    point (itself counted), k = max(1, int(m * quantile)). Distances are taken from coordinate
    differences, as sklearn's trees do, in chunks of frames bounded by DISTANCE_CHUNK_BYTES.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        raise ValueError(f"n_samples must be None or an int >= 1, got {n_samples!r}")
    x, batched = _as_frames(features)
    if n_samples is not None:
        index = torch.from_numpy(subsample_index(x.shape[1], n_samples)).to(x.device)
        x = x[:, index]
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


def bin_seeds(x: torch.Tensor, bw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's get_bin_seeds(X, bw) per frame, batched. x [F, n, d] float64, bw [F].

    Returns (seeds [F, S, d] float64, valid [F, S] bool): frame f's seeds are its distinct bins
    round(x / bw) times bw, in the first positions (padding invalid), or all its points when
    every point has its own bin.
    """
    frames, n, d = x.shape
    bins = torch.round(x / bw[:, None, None])
    frame_id = torch.arange(frames, device=x.device, dtype=x.dtype)[:, None, None].expand(frames, n, 1)
    distinct = torch.unique(torch.cat([frame_id, bins], dim=-1).reshape(-1, d + 1), dim=0)     # sorted by frame
    owner = distinct[:, 0].long()
    per_frame = torch.bincount(owner, minlength=frames)
    own_bins = per_frame == n                                        # sklearn falls back to the points
    width = int(torch.where(own_bins, n, per_frame).max())
    slot = torch.arange(owner.numel(), device=x.device) - (per_frame.cumsum(0) - per_frame)[owner]
    seeds = torch.zeros(frames, width, d, dtype=x.dtype, device=x.device)
    seeds[owner, slot] = distinct[:, 1:] * bw[owner, None]
    valid = torch.arange(width, device=x.device)[None, :] < per_frame[:, None]
    points = torch.zeros_like(seeds)
    points[:, :min(n, width)] = x[:, :width]
    seeds = torch.where(own_bins[:, None, None], points, seeds)
    return seeds, valid


def _climb(x: torch.Tensor, bw: torch.Tensor, max_iter: int, seeds: torch.Tensor | None = None,
           valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hill-climb seeds (default: every point) through the points. x [F, n, d], bw [F],
    seeds [F, S, d], valid [F, S] bool (invalid seeds are padding).

    Returns (centres [F, S, d], intensity [F, S] int64: points in the last window, 0 = dropped).
    """
    radius2 = bw.square()[:, None, None]
    stop = (STOP_FRACTION * bw)[:, None]
    means = x.clone() if seeds is None else seeds.clone()
    intensity = torch.zeros(means.shape[:2], dtype=torch.int64, device=x.device)
    active = (torch.ones(means.shape[:2], dtype=torch.bool, device=x.device) if valid is None
              else valid.clone())
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
               max_iter: int = MAX_ITER, bin_seeding: bool = False) -> torch.Tensor:
    """Mean shift clustering, equal to sklearn.cluster.MeanShift(bandwidth=bandwidth,
    bin_seeding=bin_seeding).fit_predict.

    features: [n, d] or [F, n, d] float (computed in float64). bandwidth: > 0, a scalar or one
    value per frame ([F] tensor or sequence). Returns labels int64, [n] or [F, n], on the
    features' device: 0..K-1 per frame, numbered by descending centre intensity like sklearn.
    """
    x, batched = _as_frames(features)
    bw = _bandwidths(bandwidth, x.shape[0], x.device)
    seeds, valid = bin_seeds(x, bw) if bin_seeding else (None, None)
    centres, intensity = _climb(x, bw, max_iter, seeds, valid)
    order = _lexicographic_descending(intensity, centres)
    ranked = centres.gather(1, order[..., None].expand_as(centres))
    keep = _greedy_unique(ranked, intensity.gather(1, order) > 0, bw)
    distance = _squared_distances(x, ranked).masked_fill(~keep[:, None, :], float("inf"))
    nearest = distance.argmin(dim=-1)                                      # rank of the centre
    labels = (keep.cumsum(dim=-1) - 1).gather(1, nearest)
    return labels if batched else labels[0]


def mean_shift_sklearn(features: torch.Tensor | np.ndarray, bandwidth: float | torch.Tensor,
                       bin_seeding: bool = False) -> torch.Tensor:
    """Reference: scikit-learn's MeanShift(bandwidth=..., bin_seeding=...) on the CPU, frame by frame.

    Same arguments and result layout as mean_shift (labels on the CPU).
    """
    from sklearn.cluster import MeanShift

    x, batched = _as_frames(torch.as_tensor(features))
    bw = _bandwidths(bandwidth, x.shape[0], torch.device("cpu"))
    frames = x.detach().cpu().numpy()
    labels = torch.stack([torch.from_numpy(MeanShift(bandwidth=np.float64(b), bin_seeding=bin_seeding)
                                           .fit_predict(frame)).to(torch.int64)
                          for frame, b in zip(frames, bw.tolist())])
    return labels if batched else labels[0]


def estimate_bandwidth_sklearn(features: torch.Tensor | np.ndarray, quantile: float = 0.3,
                               n_samples: int | None = None) -> torch.Tensor:
    """Reference: sklearn.cluster.estimate_bandwidth(X, quantile=quantile, n_samples=n_samples,
    random_state=0) per frame (CPU, float64)."""
    from sklearn.cluster import estimate_bandwidth as sklearn_estimate

    x, batched = _as_frames(torch.as_tensor(features))
    values = torch.tensor([sklearn_estimate(frame, quantile=quantile, n_samples=n_samples, random_state=0)
                           for frame in x.detach().cpu().numpy()],
                          dtype=torch.float64)
    return values if batched else values[0]
