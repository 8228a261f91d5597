"""Self-attention head scoring: numina_engine.numina.head_scoring."""
from __future__ import annotations

import math

import pytest
import torch

from numina_engine.kernels._triton import TRITON_AVAILABLE
from numina_engine.numina.config import NuminaConfig
from numina_engine.kernels.centre_rows import centre_rows, centre_rows_reference
from numina_engine.numina.head_scoring import (exact_principal_components, gray_from_components,
                                               pca_gray, principal_components, score_heads, score_heads_reference,
                                               top_eigenvectors)

CONFIG = NuminaConfig(mode="engine")        # head_pca="exact"


def random_softmax_maps(frames: int, heads: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [frames, heads, n, n] softmax rows of fresh random logits: half the heads iid
    Gaussian logits, half q k^T / sqrt(d) logits from random low-dimensional queries and keys."""
    iid = torch.randn(frames, heads, n, n, generator=generator) * 2.0
    q, k = (torch.randn(frames, heads, n, 6, generator=generator) for _ in range(2))
    low_rank = q @ k.mT * (3.0 / math.sqrt(6))
    use_iid = (torch.arange(heads) % 2 == 0)[None, :, None, None]
    return torch.softmax(torch.where(use_iid, iid, low_rank), dim=-1)


def planted_structure_maps(frames: int, heads: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [frames, heads, h*w, h*w] softmax maps with planted spatial structure.

    Every head attends within 2-4 Gaussian blobs of random centre and radius (logit strength
    * blob affinity, strength drawn per head in [1, 6], so heads differ in how structured they
    are), plus a mild locality term, i.i.d. noise (std 0.5) and an attention-sink token (+2 on
    token 0): a fast-decaying spectrum, like the structured heads of a trained model.
    """
    n, side = h * w, max(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w).reshape(n)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w).reshape(n)
    position = torch.stack([rows, cols], dim=-1) / side                                 # [n, 2] in [0, 1)
    locality = -6.0 * torch.cdist(position, position).square()
    maps = torch.empty(frames, heads, n, n)
    for f in range(frames):
        strengths = 1.0 + 5.0 * torch.rand(heads, generator=generator)
        for head in range(heads):
            blobs = int(torch.randint(2, 5, (1,), generator=generator))
            centres = torch.rand(blobs, 2, generator=generator) * torch.tensor([h, w]) / side
            radii = 0.08 + 0.15 * torch.rand(blobs, generator=generator)
            member = torch.exp(-torch.cdist(position, centres).square() / radii.square())  # [n, blobs]
            logits = strengths[head] * member @ member.T + locality + 0.5 * torch.randn(n, n, generator=generator)
            logits[:, 0] += 2.0
            maps[f, head] = torch.softmax(logits, dim=-1)
    return maps


@pytest.mark.parametrize("frames, heads, h, w",
                         [(2, 3, 5, 9), (3, 4, 7, 6), (1, 5, 3, 11), (2, 2, 9, 10), (1, 4, 20, 24)])
def test_score_heads_matches_reference(frames, heads, h, w):
    g = torch.Generator().manual_seed(1000 * h + w)
    maps = random_softmax_maps(frames, heads, h * w, g)
    scores, best = score_heads(maps, (h, w), CONFIG)
    ref_scores, ref_best = score_heads_reference(maps, (h, w), CONFIG)
    assert scores.shape == (frames, heads) and scores.dtype == torch.float32
    assert best.shape == (frames,) and best.dtype == torch.int64
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(best, ref_best)


@pytest.mark.parametrize("frames, heads, h, w", [(2, 6, 9, 13), (1, 8, 16, 21), (3, 5, 7, 11)])
def test_planted_structure_matches_reference(frames, heads, h, w):
    """Heads of different structure strength: the reference's best head exactly, its scores
    within 1e-4 relative (no absolute slack)."""
    g = torch.Generator().manual_seed(100 * h + w)
    maps = planted_structure_maps(frames, heads, h, w, g)
    scores, best = score_heads(maps, (h, w), CONFIG)
    ref_scores, ref_best = score_heads_reference(maps, (h, w), CONFIG)
    assert torch.equal(best, ref_best)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=0.0)
    # the best head is decided by the scores: it wins by more than twice the score tolerance
    top_two = ref_scores.topk(2, dim=-1).values
    assert bool((top_two[:, 0] - top_two[:, 1] > 2e-4 * top_two[:, 0]).all())


def test_pca_gray_matches_exact_components():
    """Structured (planted) and low-rank heads: gray within 1e-5. i.i.d.-logit heads have a flat
    spectrum (s33/s3 ~ 0.5), so the exact float32 iteration damps the bfloat16 iterations' error
    (~1e-4) only by (s33/s3)^2: their gray is checked at 1e-4."""
    g = torch.Generator().manual_seed(7)
    random = random_softmax_maps(2, 4, 8 * 13, g)                       # heads 0, 2 iid; 1, 3 low-rank
    maps = torch.cat([planted_structure_maps(2, 2, 8, 13, g), random[:, 1::2], random[:, 0::2]], dim=1)
    gray = pca_gray(maps)
    assert gray.shape == (2, 6, 8 * 13) and gray.dtype == torch.float32
    exact = gray_from_components(exact_principal_components(maps)).float()
    torch.testing.assert_close(gray[:, :4], exact[:, :4], rtol=0, atol=1e-5)
    torch.testing.assert_close(gray[:, 4:], exact[:, 4:], rtol=0, atol=1e-4)
    assert float(gray.min()) >= 0.0 and float(gray.max()) <= 1.0


def test_principal_components_sign_convention_and_norms():
    g = torch.Generator().manual_seed(11)
    maps = planted_structure_maps(3, 2, 10, 11, g)
    comps = principal_components(maps)
    assert comps.shape == (3, 2, 110, 3) and comps.dtype == torch.float64
    peak = comps.abs().argmax(dim=-2, keepdim=True)
    assert bool((comps.gather(-2, peak) > 0).all())
    # components are U*S: columns orthogonal, norms = top singular values of the centred map
    # (to float32 rounding: the last products are exact float32 ones)
    centred = maps.double() - maps.double().mean(dim=-2, keepdim=True)
    s = torch.linalg.svdvals(centred)[..., :3]
    torch.testing.assert_close(comps.norm(dim=-2), s, rtol=1e-5, atol=0.0)
    gram = comps.mT @ comps
    off_diagonal = gram - torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1))
    assert float((off_diagonal.abs() / (s[..., :, None] * s[..., None, :])).max()) < 1e-5


def test_planted_structure_scores_highest():
    """One head attends within 4 spatial blocks (a structured map); the others are noise."""
    g = torch.Generator().manual_seed(3)
    h, w, heads, frames = 9, 12, 5, 3
    rows = torch.arange(h)[:, None].expand(h, w) * 2 // h
    cols = torch.arange(w)[None, :].expand(h, w) * 2 // w
    region = (rows * 2 + cols).flatten()
    same = (region[:, None] == region[None, :]).float()
    maps = random_softmax_maps(frames, heads, h * w, g)
    planted = torch.tensor([4, 0, 2])
    for f in range(frames):
        logits = 5.0 * same + 0.5 * torch.randn(h * w, h * w, generator=g)
        maps[f, planted[f]] = torch.softmax(logits, dim=-1)
    scores, best = score_heads(maps, (h, w), CONFIG)
    assert torch.equal(best, planted)
    others = scores.masked_fill(torch.nn.functional.one_hot(planted, heads).bool(), -1.0)
    assert bool((scores.gather(1, planted[:, None])[:, 0] > 1.5 * others.amax(dim=1)).all())


def test_constant_rows_give_constant_gray():
    """Identical rows: the centred map is zero, every component constant -> gray 0.5."""
    g = torch.Generator().manual_seed(5)
    row = torch.softmax(torch.randn(20, generator=g), dim=0)
    maps = row.expand(1, 2, 20, 20).clone()
    torch.testing.assert_close(pca_gray(maps), torch.full((1, 2, 20), 0.5))
    scores, _ = score_heads(maps, (4, 5), CONFIG)
    ref, _ = score_heads_reference(maps, (4, 5), CONFIG)
    torch.testing.assert_close(scores, ref)


@pytest.mark.parametrize("k", [3, 7, 16, 32])
def test_top_eigenvectors_match_eigh(k):
    """Random PSD matrices with decaying spectra (largest 3 eigenvalues >= 5% apart)."""
    g = torch.Generator().manual_seed(k)
    basis = torch.linalg.qr(torch.randn(6, k, k, generator=g, dtype=torch.float64)).Q
    values = torch.logspace(0, -8, k, dtype=torch.float64) * (1 + 0.02 * torch.rand(6, k, generator=g))
    gram = basis @ torch.diag_embed(values) @ basis.mT
    vectors = top_eigenvectors(gram, 3)
    assert vectors.shape == (6, k, 3) and vectors.dtype == torch.float64
    expected = torch.linalg.eigh(gram).eigenvectors.flip(-1)[..., :3]
    alignment = (vectors * expected).sum(dim=-2).abs()
    torch.testing.assert_close(alignment, torch.ones(6, 3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(vectors.mT @ vectors, torch.eye(3, dtype=torch.float64).expand(6, 3, 3),
                               rtol=0, atol=1e-10)


def test_top_eigenvectors_rank_deficient_and_zero():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 9, 2, generator=g, dtype=torch.float64)
    vectors = top_eigenvectors(a @ a.mT, 3)                         # rank 2: third vector in the null space
    torch.testing.assert_close(vectors.mT @ vectors, torch.eye(3, dtype=torch.float64).expand(4, 3, 3),
                               rtol=0, atol=1e-8)
    assert float((a.mT @ vectors[..., 2:]).abs().max()) < 1e-8
    zero = top_eigenvectors(torch.zeros(2, 5, 5, dtype=torch.float64), 3)
    assert torch.equal(zero, torch.zeros(2, 5, 3, dtype=torch.float64))


@pytest.mark.skipif(not TRITON_AVAILABLE, reason="needs triton (compiled on CUDA, else its interpreter)")
@pytest.mark.parametrize("batch, n, tile, out_dtype", [(3, 37, 8192, torch.float32), (2, 45, 64, torch.float32),
                                                       (1, 70, 32, torch.float16)])
def test_centre_rows_kernel_matches_reference(batch, n, tile, out_dtype):
    """The centring kernel against its reference and the float32 difference (float32 and float16
    outputs: Triton's interpreter rounds bfloat16 wrongly), with tiles that split rows into
    several column blocks and leave partial blocks."""
    g = torch.Generator().manual_seed(n)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    maps = torch.rand(batch, n, n, generator=g).to(device)
    mean = torch.rand(batch, 1, n, generator=g).to(device)
    out = centre_rows(maps, mean, out_dtype, tile=tile)
    reference = centre_rows_reference(maps, mean, out_dtype)
    assert out.dtype == out_dtype and reference.dtype == out_dtype
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_bad_input_raises():
    maps = torch.softmax(torch.randn(2, 3, 12, 12), dim=-1)
    with pytest.raises(ValueError, match="does not match N=12"):
        score_heads(maps, (3, 5), CONFIG)
    with pytest.raises(ValueError, match=r"\[F, H, N, N\]"):
        score_heads(maps[0], (3, 4), CONFIG)
    with pytest.raises(ValueError, match="square"):
        pca_gray(torch.rand(3, 12, 11))
    with pytest.raises(ValueError, match="floating point"):
        pca_gray(torch.ones(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        principal_components(maps, iterations=0)
    with pytest.raises(ValueError, match="exact_iterations must be an int >= 0"):
        principal_components(maps, exact_iterations=-1)
    with pytest.raises(ValueError, match="block must be an int >= 3"):
        principal_components(maps, block=2)


def lowrank_oracle(centred: torch.Tensor, start: torch.Tensor, niter: int = 2) -> torch.Tensor:
    """Halko et al. 2009, Algorithm 4.4 as torch.svd_lowrank publishes it, one map at a time:
    Q = orth(C R); niter times Q = orth(C^T Q), Q = orth(C Q); U S V^T = svd(Q^T C); return Q U S."""
    q = torch.linalg.qr(centred @ start).Q
    for _ in range(niter):
        q = torch.linalg.qr(centred.T @ q).Q
        q = torch.linalg.qr(centred @ q).Q
    u, s, _ = torch.linalg.svd(q.T @ centred, full_matrices=False)
    return (q @ u) * s


def test_lowrank_components_equal_torch_svd_lowrank_with_the_seed():
    from numina_engine.numina.head_scoring import lowrank_principal_components

    maps = random_softmax_maps(1, 1, 35, torch.Generator().manual_seed(21))[0, 0]
    centred = maps - maps.mean(dim=0, keepdim=True)
    torch.manual_seed(123)
    u, s, _ = torch.svd_lowrank(centred, q=3)
    ours = lowrank_principal_components(maps, seed=123)
    torch.testing.assert_close(ours, u * s, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours, lowrank_principal_components(maps, seed=123))       # reproducible
    assert not torch.allclose(ours, lowrank_principal_components(maps, seed=124), atol=1e-4)


def test_lowrank_components_batched_equal_the_per_map_algorithm():
    from numina_engine.numina.head_scoring import lowrank_principal_components

    maps = random_softmax_maps(3, 4, 30, torch.Generator().manual_seed(22))
    ours = lowrank_principal_components(maps, seed=7)
    assert ours.shape == (3, 4, 30, 3) and ours.dtype == torch.float32
    starts = torch.randn(12, 30, 3, generator=torch.Generator().manual_seed(7))
    flat = maps.reshape(12, 30, 30)
    for b in range(12):
        centred = flat[b] - flat[b].mean(dim=0, keepdim=True)
        torch.testing.assert_close(ours.reshape(12, 30, 3)[b], lowrank_oracle(centred, starts[b]),
                                   rtol=1e-4, atol=1e-5)


def test_score_heads_with_svd_lowrank_follows_the_authors_scoring():
    """head_pca="svd_lowrank": the authors' gray image (min-max of U*S as it comes, no sign fix)
    and score, per head, from the same random starts; differs from the exact choice somewhere."""
    from numina_engine.numina.head_scoring import lowrank_principal_components

    config = NuminaConfig(mode="authors", pca_seed=3)
    maps = planted_structure_maps(4, 5, 6, 7, torch.Generator().manual_seed(23))
    scores, best = score_heads(maps, (6, 7), config)
    components = lowrank_principal_components(maps, seed=3)
    for f in range(4):
        for head in range(5):
            gray = torch.zeros(42, dtype=torch.float64)
            for c, weight in enumerate((0.299, 0.587, 0.114)):
                col = components[f, head, :, c].double()
                span = col.max() - col.min()
                gray += weight * ((col - col.min()) / span if span > 1e-8 else torch.full_like(col, 0.5))
            image = gray.reshape(1, 1, 6, 7)
            blocks = torch.nn.functional.avg_pool2d(image, (1, 1))          # 6 // 8 -> blocks of one token
            sobel_x = torch.tensor([[[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]]], dtype=torch.float64)
            gx = torch.nn.functional.conv2d(image, sobel_x, padding=1)
            gy = torch.nn.functional.conv2d(image, sobel_x.transpose(-1, -2), padding=1)
            expected = gray.std() + blocks.var() + 0.1 * torch.sqrt(gx ** 2 + gy ** 2).mean()
            torch.testing.assert_close(scores[f, head].double(), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(best, scores.argmax(dim=-1))
    assert torch.equal(score_heads(maps, (6, 7), config)[0], scores)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lowrank_components_on_cuda_at_a_wan_like_shape():
    """head_pca="svd_lowrank" on the GPU at 480p's per-frame token count (30x52 = 1560), 12 heads x
    2 frames: batched, reproducible, and equal to the per-map algorithm from the same CUDA starts."""
    from numina_engine.numina.head_scoring import lowrank_principal_components

    maps = random_softmax_maps(2, 12, 1560, torch.Generator().manual_seed(31)).cuda()
    ours = lowrank_principal_components(maps, seed=5)
    assert torch.equal(ours, lowrank_principal_components(maps, seed=5))
    starts = torch.randn(24, 1560, 3, generator=torch.Generator(device="cuda").manual_seed(5), device="cuda")
    flat = maps.reshape(24, 1560, 1560)
    for b in (0, 7, 23):
        centred = flat[b] - flat[b].mean(dim=0, keepdim=True)
        expected = lowrank_oracle(centred, starts[b])
        error = (ours.reshape(24, 1560, 3)[b] - expected).abs().max() / expected.abs().max()
        assert error < 1e-3, f"map {b}: relative error {float(error):.2e}"
    scores, best = score_heads(maps, (30, 52), NuminaConfig(mode="authors", pca_seed=5))
    assert scores.shape == (2, 12) and scores.is_cuda and bool(torch.isfinite(scores).all())
