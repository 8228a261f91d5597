"""Self-attention head scoring: per frame, the head whose attention map is most structured.

A within-frame self-attention map A [N, N] (N = h*w tokens of one frame, rows are softmax
distributions) is turned into a gray image by PCA: the rows are centred (the mean row is
subtracted), the top-3 principal components of the rows (U*S of the centred map, [N, 3]) are
each min-max normalised to [0, 1] (0.5 where a component is constant) and mixed as
gray = 0.299 c0 + 0.587 c1 + 0.114 c2, an [h, w] image. Its score is

    alpha * std(gray) + beta * var(block sums) + gamma * mean(Sobel magnitude)

(unbiased std and var; block sums over a block_grid x block_grid grid of blocks of the cropped
image; Sobel with zero padding), as in the NUMINA authors' head selection.

Sign convention (the authors' randomized SVD leaves it arbitrary): each principal component is
flipped so that its entry of largest magnitude is positive (the first such entry on exact ties).

Fast path: batched block subspace iteration on the centred map (block of 32 vectors, 24
multiplications by C^T C, shifted Cholesky-QR orthonormalisation) followed by a Rayleigh-Ritz step whose
small symmetric eigenproblem is solved by a batched cyclic Jacobi method. Everything runs on the
maps' device in float64 without host synchronisation (torch.linalg.eigh/svd synchronise on CUDA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import NuminaConfig

NUM_COMPONENTS = 3
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
CONSTANT_RANGE = 1e-8        # a component whose max - min is at most this is "constant"
CONSTANT_GRAY = 0.5

SUBSPACE_BLOCK = 32          # vectors iterated together (3 wanted + 29 oversampling)
SUBSPACE_ITERATIONS = 24     # multiplications by C^T C
JACOBI_SWEEPS = 12
CHUNK_BYTES = 1 << 30        # float64 working copy of the maps processed at once


def _sobel_kernels(like: torch.Tensor) -> torch.Tensor:
    """Sobel kernels [2, 1, 3, 3] (x then y) built on like's device and dtype (no host copy)."""
    step = torch.arange(-1, 2, device=like.device, dtype=like.dtype)        # -1, 0, 1
    smooth = 2.0 - step.abs()                                               # 1, 2, 1
    sobel_x = smooth[:, None] * step[None, :]
    return torch.stack([sobel_x, sobel_x.mT])[:, None]


def _check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2 or maps.shape[-1] != maps.shape[-2]:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"{name} must be a tensor [..., N, N] of square attention maps, got {shape}")
    if not maps.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {maps.dtype}")
    if maps.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 tokens per frame, got N={maps.shape[-1]}")


def _check_grid(grid_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    if len(grid_hw) != 2 or any(int(s) != s or s < 1 for s in grid_hw):
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {grid_hw}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if h * w != num_tokens:
        raise ValueError(f"grid_hw {h}x{w} = {h * w} tokens does not match N={num_tokens}")
    return h, w


def _orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of y [B, N, k] float64 (shifted Cholesky-QR, three passes).

    The shift keeps rank-deficient blocks finite (no NaN): columns along null directions of y
    come out tiny or as an arbitrary orthonormal completion; either way they add nothing to the
    dominant subspace that the Rayleigh-Ritz step reads.
    """
    k = y.shape[-1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device)
    shift_scale = 11.0 * (y.shape[-2] * k + k * (k + 1)) * torch.finfo(y.dtype).eps
    for _ in range(3):
        gram = y.mT @ y
        trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        shift = shift_scale * trace + torch.finfo(y.dtype).tiny
        chol = torch.linalg.cholesky_ex(gram + shift[:, None, None] * eye, check_errors=False).L
        y = torch.linalg.solve_triangular(chol.mT, y, upper=True, left=False)     # y L^-T
    return y


def _round_robin_pairs(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-robin schedule for k (even) indices: (p, q) each [k - 1, k / 2] int64, built on device.

    Round r pairs (r, k-1) and ((r + i) mod (k-1), (r - i) mod (k-1)) for i = 1 .. k/2 - 1: every
    pair of indices meets exactly once, and the pairs of a round are disjoint.
    """
    r = torch.arange(k - 1, device=device)[:, None]
    i = torch.arange(k // 2, device=device)[None, :]
    p = (r + i) % (k - 1)
    q = torch.where(i == 0, k - 1, (r - i) % (k - 1))
    return p, q


def symmetric_eigh(t: torch.Tensor, sweeps: int = JACOBI_SWEEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of symmetric matrices by cyclic Jacobi rotations, without host sync.

    t: [B, k, k] float64 symmetric. Returns (eigenvalues [B, k], eigenvectors [B, k, k] as
    columns), unordered. Each round applies k/2 disjoint rotations at once.
    """
    batch, k = t.shape[0], t.shape[-1]
    if k % 2:
        t = F.pad(t, (0, 1, 0, 1))
    size = t.shape[-1]
    eye = torch.eye(size, dtype=t.dtype, device=t.device)
    vectors = eye.expand(batch, size, size).clone()
    rows = torch.arange(batch, device=t.device)[:, None]
    schedule_p, schedule_q = _round_robin_pairs(size, t.device)
    # per round: (row, col) of the entries (pp, qq, pq) read, and of (pp, qq, pq, qp) written
    read_rows, read_cols = torch.cat([schedule_p, schedule_q, schedule_p], 1), \
        torch.cat([schedule_p, schedule_q, schedule_q], 1)
    write_rows, write_cols = torch.cat([schedule_p, schedule_q, schedule_p, schedule_q], 1), \
        torch.cat([schedule_p, schedule_q, schedule_q, schedule_p], 1)
    for _ in range(sweeps):
        for read_r, read_c, write_r, write_c in zip(read_rows, read_cols, write_rows, write_cols):
            app, aqq, apq = t[:, read_r, read_c].chunk(3, dim=-1)
            # rotation angle zeroing apq, taken in [-pi/4, pi/4] (the smallest; converges best)
            diff = aqq - app
            theta = 0.5 * torch.atan2(2.0 * apq * torch.where(diff < 0, -1.0, 1.0), diff.abs())
            c, s = torch.cos(theta), torch.sin(theta)
            rot = eye.expand(batch, size, size).clone()
            rot[rows, write_r, write_c] = torch.cat([c, c, s, -s], dim=-1)
            t = rot.mT @ t @ rot
            vectors = vectors @ rot
    return t.diagonal(dim1=-2, dim2=-1)[:, :k], vectors[:, :k, :k]


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each column of components [B, N, c] so that its largest-magnitude entry is positive."""
    peak = components.abs().argmax(dim=-2, keepdim=True)
    sign = torch.where(components.gather(-2, peak) < 0, -1.0, 1.0).to(components.dtype)
    return components * sign


def _pad_components(components: torch.Tensor) -> torch.Tensor:
    """Zero columns up to NUM_COMPONENTS (maps with fewer than 3 tokens of rank)."""
    missing = NUM_COMPONENTS - components.shape[-1]
    return F.pad(components, (0, missing)) if missing > 0 else components


def _projected_subspace(chunk: torch.Tensor, start: torch.Tensor, iterations: int) -> torch.Tensor:
    """C Q [B, N, k] float64: the centred maps chunk [B, N, N] applied to an orthonormal basis Q
    of their converged dominant right-singular subspace (block subspace iteration from start)."""
    centred = chunk.to(torch.float64)
    centred = centred - centred.mean(dim=-2, keepdim=True)
    basis = _orthonormalize(start.expand(centred.shape[0], -1, -1))
    for _ in range(iterations):
        basis = _orthonormalize(centred.mT @ (centred @ basis))
    return centred @ basis


def principal_components(maps: torch.Tensor, iterations: int = SUBSPACE_ITERATIONS,
                         chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """Top-3 principal components of the rows of each attention map (fast, batched).

    maps: [..., N, N] floating point (softmax rows), any device. Returns U*S of the centred map,
    [..., N, 3] float64 on the maps' device, signs fixed by the module's convention. The maps are
    processed in chunks whose float64 copy fits in `chunk_bytes`; no host synchronisation.
    """
    _check_maps(maps)
    n = maps.shape[-1]
    flat = maps.reshape(-1, n, n)
    block = min(SUBSPACE_BLOCK, n)
    generator = torch.Generator(device=maps.device).manual_seed(0)
    start = torch.randn(n, block, generator=generator, device=maps.device, dtype=torch.float64)
    per_chunk = max(1, chunk_bytes // (n * n * 8))
    projected = torch.cat([_projected_subspace(flat[i:i + per_chunk], start, iterations)
                           for i in range(0, flat.shape[0], per_chunk)])          # [B, N, k]
    values, vectors = symmetric_eigh(projected.mT @ projected)                   # Rayleigh-Ritz
    top = values.topk(min(NUM_COMPONENTS, values.shape[-1]), dim=-1).indices
    ritz = vectors.gather(-1, top[:, None, :].expand(-1, vectors.shape[-2], -1))
    components = _fix_signs(_pad_components(projected @ ritz))
    return components.reshape(*maps.shape[:-1], NUM_COMPONENTS)


def exact_principal_components(maps: torch.Tensor) -> torch.Tensor:
    """Same as principal_components, by exact float64 SVD of each map (reference; syncs on CUDA)."""
    _check_maps(maps)
    n = maps.shape[-1]
    centred = maps.reshape(-1, n, n).to(torch.float64)
    centred = centred - centred.mean(dim=-2, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    components = u[..., :NUM_COMPONENTS] * s[..., None, :NUM_COMPONENTS]
    return _fix_signs(_pad_components(components)).reshape(*maps.shape[:-1], NUM_COMPONENTS)


def gray_from_components(components: torch.Tensor) -> torch.Tensor:
    """Gray value [..., N] float64 of principal components [..., N, 3] (min-max per component)."""
    low = components.amin(dim=-2, keepdim=True)
    span = components.amax(dim=-2, keepdim=True) - low
    constant = span <= CONSTANT_RANGE
    unit = torch.where(constant, CONSTANT_GRAY, (components - low) / torch.where(constant, 1.0, span))
    return sum(weight * unit[..., c] for c, weight in enumerate(GRAY_WEIGHTS))


def pca_gray(maps: torch.Tensor) -> torch.Tensor:
    """PCA gray image of each attention map: maps [..., N, N] float -> gray [..., N] float32."""
    return gray_from_components(principal_components(maps)).to(torch.float32)


def _block_shape(h: int, w: int, block_grid: int) -> tuple[int, int]:
    return max(1, h // block_grid), max(1, w // block_grid)


def structure_scores(gray: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig) -> torch.Tensor:
    """Structure score [B] (dtype of gray) of gray images gray [B, N], N = h*w in row-major order."""
    h, w = _check_grid(grid_hw, gray.shape[-1])
    images = gray.reshape(-1, 1, h, w)
    spread = gray.std(dim=-1)
    bh, bw = _block_shape(h, w, config.sa_block_grid)
    cropped = images[..., :(h // bh) * bh, :(w // bw) * bw]
    block_sums = F.avg_pool2d(cropped, (bh, bw), stride=(bh, bw)) * (bh * bw)
    richness = block_sums.flatten(1).var(dim=-1)
    gradients = F.conv2d(images, _sobel_kernels(images), padding=1)
    edges = gradients.square().sum(dim=1).sqrt().flatten(1).mean(dim=-1)
    return config.sa_alpha * spread + config.sa_beta * richness + config.sa_gamma * edges


def score_heads(maps: torch.Tensor, grid_hw: tuple[int, int],
                config: NuminaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every head of every frame and pick the best head per frame (batched, no host sync).

    maps: [F, H, N, N] float (within-frame self-attention softmax maps, N = h*w).
    Returns (scores [F, H] float32, best_head [F] int64), on the maps' device.
    """
    _check_maps(maps)
    if maps.dim() != 4:
        raise ValueError(f"maps must be [F, H, N, N], got shape {tuple(maps.shape)}")
    frames, heads, n, _ = maps.shape
    _check_grid(grid_hw, n)
    gray = gray_from_components(principal_components(maps)).reshape(frames * heads, n)
    scores = structure_scores(gray, grid_hw, config).reshape(frames, heads).to(torch.float32)
    return scores, scores.argmax(dim=-1)


def score_heads_reference(maps: torch.Tensor, grid_hw: tuple[int, int],
                          config: NuminaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle for score_heads: one head at a time, exact float64 SVD, plain per-image formulas.

    maps: [F, H, N, N] float. Returns (scores [F, H] float32, best_head [F] int64) on the CPU.
    """
    _check_maps(maps)
    if maps.dim() != 4:
        raise ValueError(f"maps must be [F, H, N, N], got shape {tuple(maps.shape)}")
    frames, heads, n, _ = maps.shape
    h, w = _check_grid(grid_hw, n)
    scores = torch.zeros(frames, heads, dtype=torch.float64)
    sobel_x = torch.tensor([[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]], dtype=torch.float64)
    sobel_y = sobel_x.transpose(-1, -2)
    for f in range(frames):
        for head in range(heads):
            attn = maps[f, head].detach().cpu().double()
            u, s, _ = torch.linalg.svd(attn - attn.mean(dim=0, keepdim=True))
            components = u[:, :NUM_COMPONENTS] * s[:NUM_COMPONENTS]
            channels = []
            for c in range(NUM_COMPONENTS):
                if c >= components.shape[1]:
                    channels.append(torch.full((n,), CONSTANT_GRAY, dtype=torch.float64))
                    continue
                col = components[:, c]
                col = col if col[col.abs().argmax()] >= 0 else -col
                span = col.max() - col.min()
                channels.append((col - col.min()) / span if span > CONSTANT_RANGE
                                else torch.full_like(col, CONSTANT_GRAY))
            gray = sum(wt * ch for wt, ch in zip(GRAY_WEIGHTS, channels))
            image = gray.reshape(1, 1, h, w)
            bh, bw = _block_shape(h, w, config.sa_block_grid)
            blocks = F.avg_pool2d(image[..., :(h // bh) * bh, :(w // bw) * bw], (bh, bw)) * (bh * bw)
            sobel = torch.sqrt(F.conv2d(image, sobel_x, padding=1) ** 2 + F.conv2d(image, sobel_y, padding=1) ** 2)
            scores[f, head] = (config.sa_alpha * gray.std() + config.sa_beta * blocks.var()
                               + config.sa_gamma * sobel.mean())
    scores = scores.to(torch.float32)
    return scores, scores.argmax(dim=-1)
