"""Self-attention head scoring: numina_engine.numina.head_scoring."""
from __future__ import annotations

import math

import pytest
import torch

from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.head_scoring import (exact_principal_components, gray_from_components, pca_gray,
                                               principal_components, score_heads, score_heads_reference,
                                               symmetric_eigh)

CONFIG = NuminaConfig()


def random_softmax_maps(frames: int, heads: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """float32 [frames, heads, n, n] softmax rows of fresh random logits: half the heads iid
    Gaussian logits, half q k^T / sqrt(d) logits from random low-dimensional queries and keys."""
    iid = torch.randn(frames, heads, n, n, generator=generator) * 2.0
    q, k = (torch.randn(frames, heads, n, 6, generator=generator) for _ in range(2))
    low_rank = q @ k.mT * (3.0 / math.sqrt(6))
    use_iid = (torch.arange(heads) % 2 == 0)[None, :, None, None]
    return torch.softmax(torch.where(use_iid, iid, low_rank), dim=-1)


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


def test_pca_gray_matches_exact_components():
    g = torch.Generator().manual_seed(7)
    maps = random_softmax_maps(2, 3, 8 * 13, g)
    gray = pca_gray(maps)
    assert gray.shape == (2, 3, 8 * 13) and gray.dtype == torch.float32
    exact = gray_from_components(exact_principal_components(maps)).float()
    torch.testing.assert_close(gray, exact, rtol=0, atol=1e-5)
    assert float(gray.min()) >= 0.0 and float(gray.max()) <= 1.0


def test_principal_components_sign_convention_and_chunking():
    g = torch.Generator().manual_seed(11)
    maps = random_softmax_maps(3, 2, 6 * 7, g)
    comps = principal_components(maps)
    peak = comps.abs().argmax(dim=-2, keepdim=True)
    assert bool((comps.gather(-2, peak) > 0).all())
    chunked = principal_components(maps, chunk_bytes=1)            # one map per chunk
    torch.testing.assert_close(chunked, comps, rtol=0, atol=1e-10)
    # components are U*S: columns orthogonal, norms = top singular values of the centred map
    centred = maps.double() - maps.double().mean(dim=-2, keepdim=True)
    s = torch.linalg.svdvals(centred)[..., :3]
    torch.testing.assert_close(comps.norm(dim=-2), s, rtol=1e-8, atol=1e-12)


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


@pytest.mark.parametrize("k", [2, 7, 16, 32])
def test_symmetric_eigh_matches_torch(k):
    g = torch.Generator().manual_seed(k)
    a = torch.randn(6, k, k, generator=g, dtype=torch.float64)
    a = (a @ a.mT) * torch.logspace(0, -6, k, dtype=torch.float64)
    a = (a + a.mT) / 2
    values, vectors = symmetric_eigh(a)
    torch.testing.assert_close(values.sort(dim=-1).values, torch.linalg.eigvalsh(a), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vectors @ torch.diag_embed(values) @ vectors.mT, a, rtol=0, atol=1e-10)
    torch.testing.assert_close(vectors.mT @ vectors, torch.eye(k, dtype=torch.float64).expand(6, k, k),
                               rtol=0, atol=1e-12)


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
