"""Self-attention head scoring: per frame, the head whose attention map is most structured.

A within-frame self-attention map A [N, N] (N = h*w tokens of one frame, rows are softmax
distributions) is turned into a gray image by PCA: the rows are centred (the mean row is
subtracted), the top-3 principal components of the rows (U*S of the centred map, [N, 3]) are
each min-max normalised to [0, 1] (0.5 where a component is constant) and mixed as
gray = 0.299 c0 + 0.587 c1 + 0.114 c2, an [h, w] image. Its score is

    alpha * std(gray) + beta * var(block sums) + gamma * mean(Sobel magnitude)

(unbiased std and var; block sums over a block_grid x block_grid grid of blocks of the cropped
image; Sobel with zero padding), as in the NUMINA authors' head selection.

`config.head_pca` picks the components: "exact" (below: the exact principal components, fast path)
or "svd_lowrank" (the authors' rule: torch.svd_lowrank(centred, q=3) semantics, see
lowrank_principal_components: randomized, no oversampling, 2 power iterations, no sign fix).

Sign convention of "exact" (the authors' randomized SVD leaves it arbitrary): each principal component is
flipped so that its entry of largest magnitude is positive (the first such entry on exact ties).

Fast path: all maps of a call at once, a fixed number of batched products, no host sync.
With J = I - 1 1^T / N, the centred map is C = J A, and C = J (A - 1 d^T) for any row d.
  1. One bfloat16 copy of A - 1 m~^T (m~: mean of a subsample of rows; kernels/centre_rows.py).
  2. Block subspace iteration on C: SUBSPACE_ITERATIONS multiplications of SUBSPACE_BLOCK vectors
     by C^T C, as copy^T J (copy X) in bfloat16 tensor-core products (float32 accumulation), each
     followed by a float64 shifted Cholesky-QR. bfloat16 rounding limits how well the subspace
     is found (~1e-4).
  3. EXACT_ITERATIONS more multiplications by C^T C with exact float32 products on the float32
     maps (C Q = J (A Q), C^T P = A^T P; TF32 off), which remove that bfloat16 floor.
  4. Rayleigh-Ritz: P = C Q (exact float32), the top-3 eigenvectors W of P^T P (float64, powered
     deflation in top_eigenvectors), components = P W.
Components converge like (s_{k+1} / s_i)^(2 * iterations + 1) (s: singular values of C, k the
block) and, within the subspace, are resolved to a relative error of about 1e-6 / (relative gap
to the next singular value). They match an exact SVD to ~1e-6 where the spectrum decays and the
top singular values are apart (structured heads); near ties (s4 ~ s3) and flat spectra (i.i.d.
random logits), which make the components barely determined by the map, give ~1e-4 to 1e-3.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..kernels.centre_rows import centre_rows
from ..kernels.dispatch import AUTO, KernelChoice
from .config import NuminaConfig

NUM_COMPONENTS = 3
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
CONSTANT_RANGE = 1e-8        # a component whose max - min is at most this is "constant"
CONSTANT_GRAY = 0.5

SUBSPACE_BLOCK = 32          # vectors iterated together (3 wanted + 29 oversampling)
SUBSPACE_ITERATIONS = 5      # multiplications by C^T C with bfloat16 products
EXACT_ITERATIONS = 1         # then multiplications by C^T C with exact float32 products
ITERATION_DTYPE = torch.bfloat16
MEAN_SAMPLE_ROWS = 256       # the bfloat16 copy is centred by the mean of about this many rows
POWER_ROUNDS = 2             # top_eigenvectors: rounds of (normalise, square SQUARINGS_PER_ROUND times):
SQUARINGS_PER_ROUND = 6      # each Ritz vector is read off the 2^12-th power of the deflated matrix


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


def check_grid(grid_hw: tuple[int, int], num_tokens: int) -> tuple[int, int]:
    """(h, w) as ints, checked against the N = h*w tokens of a frame; ValueError otherwise."""
    if len(grid_hw) != 2 or any(int(s) != s or s < 1 for s in grid_hw):
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {grid_hw}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if h * w != num_tokens:
        raise ValueError(f"grid_hw {h}x{w} = {h * w} tokens does not match N={num_tokens}")
    return h, w


@contextlib.contextmanager
def _ieee_float32_matmul(device: torch.device):
    """Inside the block, float32 matmuls on CUDA are exact IEEE products (no TF32), whatever the
    caller's setting; the setting is restored on exit. Nothing changes for other devices."""
    if device.type != "cuda":
        yield
        return
    settings = torch.backends.cuda.matmul
    saved = settings.fp32_precision
    settings.fp32_precision = "ieee"
    try:
        yield
    finally:
        settings.fp32_precision = saved


def _orthonormalize(y: torch.Tensor, passes: int) -> torch.Tensor:
    """Basis [B, N, k] float64 of the span of the columns of y [B, N, k] (shifted Cholesky-QR).

    One pass gives a well-conditioned basis (enough between iterations, where only the span
    counts), two an orthonormal one to float64 rounding for y with condition number below ~1e7
    (the shift bounds it). The shift keeps rank-deficient blocks finite (no NaN): columns along
    null directions of y come out tiny or zero and add nothing to the dominant subspace.
    """
    y = y.to(torch.float64)
    k = y.shape[-1]
    eye = torch.eye(k, dtype=y.dtype, device=y.device)
    shift_scale = 11.0 * (y.shape[-2] * k + k * (k + 1)) * torch.finfo(y.dtype).eps
    for _ in range(passes):
        gram = y.mT @ y
        diagonal = gram.diagonal(dim1=-2, dim2=-1)
        diagonal.add_(torch.add(torch.finfo(y.dtype).tiny, diagonal.sum(-1, keepdim=True), alpha=shift_scale))
        chol = torch.linalg.cholesky_ex(gram, check_errors=False).L
        y = y @ torch.linalg.solve_triangular(chol, eye, upper=False).mT                  # y L^-T
    return y


def top_eigenvectors(gram: torch.Tensor, count: int) -> torch.Tensor:
    """Eigenvectors of the `count` largest eigenvalues of symmetric PSD matrices, largest first.

    gram: [B, k, k] float64. Returns [B, k, count] float64 orthonormal columns, without host sync.
    Each vector is the dominant direction of the matrix with the vectors before it projected out,
    read off a column of its 4096th power (normalised repeated squaring): exact to float64
    rounding where consecutive eigenvalues differ by more than ~0.5% relative; near ties give a
    basis of the nearly tied eigenspace, rank deficiency some orthonormal completion. Zero
    matrices give zero vectors.
    """
    tiny = torch.finfo(gram.dtype).tiny
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    remaining, found = gram, gram.new_zeros(gram.shape[0], k, 0)
    for index in range(count):
        power = remaining
        for _ in range(POWER_ROUNDS):
            # the normalised matrix has eigenvalues <= 1 and its largest >= k^-1/2: 6 squarings
            # (power 64) neither overflow nor underflow that one
            power = power / (torch.linalg.vector_norm(power, dim=(-2, -1), keepdim=True) + tiny)
            for _ in range(SQUARINGS_PER_ROUND):
                power = power @ power
        pick = power.square().sum(dim=-2).argmax(dim=-1)                                  # [B]
        vector = power.gather(-1, pick[:, None, None].expand(-1, k, 1))                   # [B, k, 1]
        vector = vector - found @ (found.mT @ vector)          # exactly orthogonal to the ones found
        vector = vector / (torch.linalg.vector_norm(vector, dim=-2, keepdim=True) + tiny)
        found = torch.cat([found, vector], dim=-1)
        if index + 1 < count:
            projector = eye - found @ found.mT
            remaining = projector @ gram @ projector
    return found


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each column of components [B, N, c] so that its largest-magnitude entry is positive."""
    peak = components.abs().argmax(dim=-2, keepdim=True)
    sign = torch.where(components.gather(-2, peak) < 0, -1.0, 1.0).to(components.dtype)
    return components * sign


def _pad_components(components: torch.Tensor) -> torch.Tensor:
    """Zero columns up to NUM_COMPONENTS (maps with fewer than 3 tokens of rank)."""
    missing = NUM_COMPONENTS - components.shape[-1]
    return F.pad(components, (0, missing)) if missing > 0 else components


def _centred_copy(maps: torch.Tensor, dtype: torch.dtype, kernels: KernelChoice = AUTO) -> torch.Tensor:
    """maps [B, N, N] float32 contiguous minus an estimate of their mean row, in dtype [B, N, N].

    The mean of every (N // MEAN_SAMPLE_ROWS)-th row is used (all rows for N < 2 * MEAN_SAMPLE_ROWS):
    the copy is only used through products centred exactly afterwards (_centred), so the estimate
    only has to make the copy's entries about as small as the centred map's (for its rounding).
    """
    n = maps.shape[-1]
    mean = maps[:, ::max(1, n // MEAN_SAMPLE_ROWS)].mean(dim=-2, keepdim=True)               # [B, 1, N]
    return kernels.pick(centre_rows, maps)(maps, mean, dtype)


def _centred(product: torch.Tensor) -> torch.Tensor:
    """J Y for Y = M X [B, N, k] (J = I - 1 1^T / N, in place): the product of the centred map
    C = J M. For M = C + 1 d^T (any row offset d), J M = C, so this is exact."""
    return product.sub_(product.mean(dim=-2, keepdim=True))


def _dominant_subspace(copy: torch.Tensor, block: int, iterations: int) -> torch.Tensor:
    """Well-conditioned basis [B, N, block] float64 (one Cholesky-QR pass from orthonormal) of the
    dominant right-singular subspace of the centred maps C = J copy, copy: [B, N, N]
    ITERATION_DTYPE (see _centred_copy): block subspace iteration from a fixed random start
    shared by all maps. C^T Y = copy^T Y for Y = C X (columns summing to zero), so only C X
    needs the centring.
    """
    n = copy.shape[-1]
    generator = torch.Generator(device=copy.device).manual_seed(0)
    basis = torch.randn(n, block, generator=generator, device=copy.device).to(copy.dtype)
    for _ in range(iterations):
        spanning = _orthonormalize(copy.mT @ _centred(copy @ basis), passes=1)
        basis = spanning.to(copy.dtype)
    return spanning


def _exact_product(maps: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """C Q [B, N, k] float32 of the centred maps C = J maps, by exact float32 products.

    maps: [B, N, N] float32; basis Q: [B, N, k] float32. Computed as J (maps Q): exact in real
    arithmetic, rounding relative to |maps Q| (not |C Q|).
    """
    with _ieee_float32_matmul(maps.device):
        return _centred(maps @ basis)


def _exact_transposed_product(maps: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """C^T P [B, N, k] float32 for P = C Q (columns summing to zero), by exact float32 products.

    maps: [B, N, N] float32. C^T P = maps^T J P = maps^T P since J P = P.
    """
    with _ieee_float32_matmul(maps.device):
        return maps.mT @ left


def principal_components(maps: torch.Tensor, iterations: int = SUBSPACE_ITERATIONS,
                         block: int = SUBSPACE_BLOCK, exact_iterations: int = EXACT_ITERATIONS, *,
                         kernels: KernelChoice = AUTO) -> torch.Tensor:
    """Top-3 principal components of the rows of each attention map (fast, batched).

    maps: [..., N, N] floating point (softmax rows), any device. Returns U*S of the centred map,
    [..., N, 3] float64 on the maps' device, signs fixed by the module's convention. Needs about
    N*N*2 bytes per map of working memory (the bfloat16 copy); no host synchronisation.
    iterations: bfloat16 subspace iterations (>= 1); exact_iterations: float32 ones after them
    (>= 0); block: vectors iterated together (>= 3, capped at N); kernels: the engine's
    KernelChoice for the centring (kernels/centre_rows.py).
    """
    _check_maps(maps)
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations}")
    if int(exact_iterations) != exact_iterations or exact_iterations < 0:
        raise ValueError(f"exact_iterations must be an int >= 0, got {exact_iterations}")
    if int(block) != block or block < NUM_COMPONENTS:
        raise ValueError(f"block must be an int >= {NUM_COMPONENTS}, got {block}")
    n = maps.shape[-1]
    flat = maps.reshape(-1, n, n).to(torch.float32).contiguous()
    copy = _centred_copy(flat, ITERATION_DTYPE, kernels)
    basis = _dominant_subspace(copy, min(block, n), iterations)
    del copy
    if exact_iterations == 0:
        basis = _orthonormalize(basis, passes=1)                       # orthonormal for Rayleigh-Ritz
    basis = basis.to(torch.float32)
    for _ in range(exact_iterations):
        product = _exact_transposed_product(flat, _exact_product(flat, basis))
        basis = _orthonormalize(product, passes=2).to(torch.float32)
    projected = _exact_product(flat, basis).to(torch.float64)                             # C Q [B, N, k]
    ritz = top_eigenvectors(projected.mT @ projected, min(NUM_COMPONENTS, basis.shape[-1]))
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


LOWRANK_Q = 3               # svd_lowrank's q, as the authors call it
LOWRANK_NITER = 2           # svd_lowrank's default number of power iterations


def lowrank_principal_components(maps: torch.Tensor, seed: int, first_map: int = 0,
                                 total_maps: int | None = None) -> torch.Tensor:
    """The authors' PCA: torch.svd_lowrank(centred, q=3) of each map, batched, reproducible.

    maps: [..., N, N] floating point; seed: seeds a torch.Generator on the maps' device, which
    draws the random starts [total_maps, N, 3] of every map of the run at once, of which these B maps
    take rows first_map .. first_map + B - 1 (default: all B maps are the run), so that a map's start
    depends on its place in the run, not on how the run was split into calls. Returns
    U*S [..., N, 3] float32 (Halko et al. 4.4 as torch.svd_lowrank: Q = qr(C R), then niter = 2
    times Q = qr(C^T Q), Q = qr(C Q); U, S = svd(Q^T C); U = Q U), signs as they fall.
    The authors' code draws the start from the unseeded global RNG, so their runs are not
    reproducible; this one is, for a given seed. For one map on the CPU it equals torch.svd_lowrank
    after torch.manual_seed(seed).
    """
    _check_maps(maps)
    n = maps.shape[-1]
    centred = maps.reshape(-1, n, n).to(torch.float32)
    centred = centred - centred.mean(dim=-2, keepdim=True)
    batch = centred.shape[0]
    total_maps = first_map + batch if total_maps is None else total_maps
    if not 0 <= first_map <= total_maps - batch:
        raise ValueError(f"maps {first_map}..{first_map + batch - 1} are not inside a run of {total_maps} maps")
    q = min(LOWRANK_Q, n)
    generator = torch.Generator(device=centred.device).manual_seed(int(seed))
    start = torch.randn(total_maps, n, q, generator=generator, device=centred.device,
                        dtype=torch.float32)[first_map:first_map + batch]
    basis = torch.linalg.qr(centred @ start).Q
    for _ in range(LOWRANK_NITER):
        basis = torch.linalg.qr(centred.mT @ basis).Q
        basis = torch.linalg.qr(centred @ basis).Q
    u, s, _ = torch.linalg.svd(basis.mT @ centred, full_matrices=False)
    components = _pad_components((basis @ u) * s[..., None, :])
    return components.reshape(*maps.shape[:-1], NUM_COMPONENTS)


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
    h, w = check_grid(grid_hw, gray.shape[-1])
    images = gray.reshape(-1, 1, h, w)
    spread = gray.std(dim=-1)
    bh, bw = _block_shape(h, w, config.sa_block_grid)
    cropped = images[..., :(h // bh) * bh, :(w // bw) * bw]
    block_sums = F.avg_pool2d(cropped, (bh, bw), stride=(bh, bw)) * (bh * bw)
    richness = block_sums.flatten(1).var(dim=-1)
    gradients = F.conv2d(images, _sobel_kernels(images), padding=1)
    edges = gradients.square().sum(dim=1).sqrt().flatten(1).mean(dim=-1)
    return config.sa_alpha * spread + config.sa_beta * richness + config.sa_gamma * edges


def score_heads(maps: torch.Tensor, grid_hw: tuple[int, int], config: NuminaConfig, *,
                kernels: KernelChoice = AUTO, first_frame: int = 0, total_frames: int | None = None,
                first_head: int = 0, total_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every head of every frame and pick the best head per frame (batched, no host sync).

    maps: [F, H, N, N] float (within-frame self-attention softmax maps, N = h*w), frames
    first_frame .. first_frame + F - 1 of a video of total_frames (default: these F are the video).
    Its H heads are heads first_head .. first_head + H - 1 of total_heads (default: all of them; a
    Ulysses rank scores its own heads), which only the seeding of "svd_lowrank" needs to know.
    Returns (scores [F, H] float32, best_head [F] int64), on the maps' device. The components
    follow config.head_pca; the randomized ones are seeded by config.pca_seed per frame of the video,
    so a video scored in chunks of frames gets the scores of one call.
    """
    _check_maps(maps)
    if maps.dim() != 4:
        raise ValueError(f"maps must be [F, H, N, N], got shape {tuple(maps.shape)}")
    frames, heads, n, _ = maps.shape
    check_grid(grid_hw, n)
    total_heads = heads if total_heads is None else total_heads
    if not 0 <= first_head <= total_heads - heads:
        raise ValueError(f"heads {first_head}..{first_head + heads - 1} are not heads of {total_heads}")
    if config.head_pca == "svd_lowrank":
        total = (first_frame + frames if total_frames is None else total_frames) * total_heads
        if heads == total_heads:
            components = lowrank_principal_components(maps, config.pca_seed, first_frame * heads, total)
        else:                               # map (frame, head) has start row frame * total_heads + head
            components = torch.stack([
                lowrank_principal_components(maps[f], config.pca_seed, (first_frame + f) * total_heads + first_head,
                                             total) for f in range(frames)])
    else:
        components = principal_components(maps, kernels=kernels)
    gray = gray_from_components(components).reshape(frames * heads, n)
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
    h, w = check_grid(grid_hw, n)
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
