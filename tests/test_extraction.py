"""engine/extraction.py: the extraction block's self-attention (chunks of frames within a maps
budget, head scoring, the block output that NuminaConfig.extraction_block_output names) and noun maps."""
import math

import pytest
import torch

from numina_engine.engine.extraction import (
    DEFAULT_MAPS_BUDGET_BYTES,
    Extraction,
    extract_noun_maps,
    extract_self_attention,
    frame_maps_bytes,
    frames_per_chunk,
)
from numina_engine.errors import UserInputError
from numina_engine.kernels import KernelChoice
from numina_engine.kernels._triton import TRITON_AVAILABLE, TRITON_INTERPRETED
from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.head_scoring import score_heads

GRID = (5, 4, 5)            # frames, height, width: 20 tokens a frame
HEADS, HEAD_DIM = 3, 16
NOUN_TOKENS = torch.tensor([[2, -1], [7, 8]], dtype=torch.int32)


def qkv(seed: int, padding: int = 0):
    frames, h, w = GRID
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, frames * h * w + padding, HEADS, HEAD_DIM, generator=g) * gain
                 for gain in (2.0, 1.0, 1.0))


def extraction(output: str = "full", budget: int = DEFAULT_MAPS_BUDGET_BYTES, head_pca: str = "exact") -> Extraction:
    return Extraction(layer=0, grid=GRID, noun_tokens=NOUN_TOKENS, maps_budget_bytes=budget,
                      config=NuminaConfig(extraction_block_output=output, head_pca=head_pca, pca_seed=3))


def test_chunk_sizes_follow_the_maps_budget():
    # Wan2.1-1.3B at 832x480 (12 heads, 1560 tokens a frame): all 21 frames in one chunk.
    assert frames_per_chunk(21, 12, 1560, DEFAULT_MAPS_BUDGET_BYTES) == 21
    # 14B at 1280x720 (40 heads, 3600 tokens a frame, 2.07 GB of maps a frame): 2 frames a chunk.
    assert frame_maps_bytes(40, 3600) == 40 * 3600 ** 2 * 4
    assert frames_per_chunk(21, 40, 3600, DEFAULT_MAPS_BUDGET_BYTES) == 2
    assert frames_per_chunk(21, 40, 3600, 1) == 1                   # a frame over budget is its own chunk
    assert frames_per_chunk(3, 2, 10, 10 ** 9) == 3                   # never more than the frames
    with pytest.raises(ValueError, match=">= 1 byte"):
        frames_per_chunk(3, 2, 10, 0)


@pytest.mark.parametrize("head_pca", ["exact", "svd_lowrank"])
def test_chunking_does_not_change_the_result(head_pca):
    q, k, v = qkv(1)
    one_chunk = extraction(head_pca=head_pca)
    chunked = extraction(budget=2 * frame_maps_bytes(HEADS, 20), head_pca=head_pca)
    reference = KernelChoice("reference")
    out = extract_self_attention(q, k, v, one_chunk, reference)
    assert torch.equal(extract_self_attention(q, k, v, chunked, reference), out)
    for name in ("self_maps", "best_head", "head_scores"):
        torch.testing.assert_close(getattr(chunked, name), getattr(one_chunk, name), rtol=1e-6, atol=1e-7)


def per_frame_attention(q, k, v):
    """Oracle: each frame's softmax attention on its own, float64, heads at once; zeros past the video."""
    frames, h, w = GRID
    n = h * w
    out = torch.zeros(q.shape, dtype=torch.float64)
    for f in range(frames):
        rows = slice(f * n, (f + 1) * n)
        qf, kf, vf = (t[0, rows].double().transpose(0, 1) for t in (q, k, v))          # [H, N, D]
        out[0, rows] = (torch.softmax(qf @ kf.mT / math.sqrt(HEAD_DIM), dim=-1) @ vf).transpose(0, 1)
    return out


# "triton" needs compiled Triton: head scoring's centring writes bfloat16, which the interpreter
# computes wrongly (the attention kernels' own tests cover them in the interpreter).
CHOICES = ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    not (TRITON_AVAILABLE and torch.cuda.is_available() and not TRITON_INTERPRETED),
    reason="needs a CUDA GPU and compiled Triton"))]


@pytest.mark.parametrize("choice", CHOICES)
def test_within_frame_output_is_per_frame_attention_with_the_same_maps(choice):
    q, k, v = qkv(2, padding=3)
    if choice == "triton":
        q, k, v = (t.cuda() for t in (q, k, v))
    full, within = extraction("full"), extraction("within_frame")
    kernels = KernelChoice(choice)
    full_out = extract_self_attention(q, k, v, full, kernels)
    within_out = extract_self_attention(q, k, v, within, kernels)
    q, k, v, full_out, within_out = (t.cpu() for t in (q, k, v, full_out, within_out))
    expected = per_frame_attention(q, k, v)
    assert ((within_out.double() - expected).norm() / expected.norm()).item() < 1e-5
    assert not torch.allclose(full_out, within_out, atol=1e-3)        # the full attention crosses frames
    torch.testing.assert_close(within.self_maps, full.self_maps, rtol=1e-5, atol=1e-7)
    assert torch.equal(within.best_head, full.best_head)
    within_maps, within_best = within.self_maps.cpu(), within.best_head.cpu()
    # the kept maps are each frame's best head's softmax maps, as head scoring ranks them
    frames, h, w = GRID
    qf = q[0, :frames * h * w].unflatten(0, (frames, h * w))
    kf = k[0, :frames * h * w].unflatten(0, (frames, h * w))
    maps = torch.softmax(torch.einsum("fihd,fjhd->fhij", qf, kf) / math.sqrt(HEAD_DIM), dim=-1)
    _, best = score_heads(maps, (h, w), NuminaConfig())
    assert torch.equal(within_best, best)
    torch.testing.assert_close(within_maps, maps[torch.arange(frames), best], rtol=1e-4, atol=1e-6)


def test_noun_maps_are_laid_out_by_frame():
    q, _, _ = qkv(3)
    g = torch.Generator().manual_seed(4)
    k, v = (torch.randn(1, 12, HEADS, HEAD_DIM, generator=g) for _ in range(2))
    state = extraction()
    extract_noun_maps(q, k, v, state, KernelChoice("reference"))
    frames, h, w = GRID
    assert state.noun_maps.shape == (2, frames, h * w)
    probs = torch.softmax(q[0].transpose(0, 1) @ k[0].transpose(0, 1).mT / math.sqrt(HEAD_DIM), dim=-1)  # [H, L, T]
    expected = probs[:, :, 7:9].mean(dim=-1).mean(dim=0).unflatten(0, (frames, h * w))
    torch.testing.assert_close(state.noun_maps[1], expected, rtol=1e-5, atol=1e-7)


def test_unknown_block_output_lists_the_valid_ones():
    with pytest.raises(UserInputError, match=r"extraction_block_output='diagonal' is not valid; valid: \['within_frame', 'full'\]"):
        NuminaConfig(extraction_block_output="diagonal")
