"""The one attention interface the Wan DiT calls.

Every self- and cross-attention of `WanDiT` goes through these two functions, with the block's
`layer_index` and the per-forward-call `ForwardState` (NUMINA's per-run state), so extraction and
modulation are routed here without touching the model:

- plain calls: PyTorch SDPA (cuDNN / flash backends on a GPU);
- the extraction block: the fused self-attention that also yields within-frame softmax statistics,
  then the within-frame maps chunk by chunk, scored per head, keeping each frame's best head; and
  the cross-attention that yields each counted noun's probability map in the same pass;
- modulated calls: plain cross-attention, then the modulated queries' rows again with the compact
  layout bias applied inside the column-bias kernel.

On CUDA tensors the kernels run compiled; on the CPU the engine calls their PyTorch references
(Triton's interpreter is for the kernel tests, not for generating videos).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from ..kernels._triton import SUPPORTED_HEAD_DIMS
from ..numina.head_scoring import score_heads
from ..numina.modulation import layout_bias
from .forward_state import Extraction, ForwardState, Modulation


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over [B, L, H, D] inputs; returns [B, Lq, H, D] in q's dtype."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _fused(kernel, q: torch.Tensor):
    """The Triton kernel for CUDA inputs of a head size it supports (SUPPORTED_HEAD_DIMS), its PyTorch
    reference (same signature) otherwise."""
    return kernels.kernel_or_reference(kernel, q.is_cuda and q.shape[-1] in SUPPORTED_HEAD_DIMS)


def _extraction_at(state: ForwardState | None, layer_index: int) -> Extraction | None:
    if state is None or state.extraction is None or state.extraction.layer != layer_index:
        return None
    return state.extraction


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int,
                   state: ForwardState | None) -> torch.Tensor:
    """Self-attention over the video tokens of block `layer_index`.

    q, k, v: [B, L, H, D] (RoPE already applied to q and k), all in the model's compute dtype.
    Returns [B, L, H, D] in the same dtype: always the true full attention output.
    """
    extraction = _extraction_at(state, layer_index)
    if extraction is None:
        return _sdpa(q, k, v)
    frames, height, width = extraction.grid
    tokens = height * width
    out, frame_lse = _fused(kernels.attention_with_frame_lse, q)(
        q, k, v, frame_tokens=tokens, num_frames=frames, stats_batch=extraction.batch_index)
    best_maps, best_heads, all_scores = [], [], []
    for start in range(0, frames, extraction.frames_per_chunk):
        stop = min(start + extraction.frames_per_chunk, frames)
        span = slice(start * tokens, stop * tokens)
        maps = _fused(kernels.frame_attention_maps, q)(q[:, span], k[:, span], frame_lse[:, span], frame_tokens=tokens,
                                            num_frames=stop - start, batch=extraction.batch_index)
        scores, best = score_heads(maps, (height, width), extraction.config)      # [c, H], [c]
        best_maps.append(maps[torch.arange(stop - start, device=maps.device), best])
        best_heads.append(best)
        all_scores.append(scores)
        del maps
    extraction.self_maps = torch.cat(best_maps)
    extraction.best_head = torch.cat(best_heads)
    extraction.head_scores = torch.cat(all_scores)
    return out


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int,
                    state: ForwardState | None) -> torch.Tensor:
    """Cross-attention of block `layer_index` from video tokens to text tokens.

    q: [B, L, H, D] video queries; k, v: [B, T, H, D] text keys/values (T = text_len, 512 for Wan,
    zero-padded tokens included, as Wan attends to all of them). Returns [B, L, H, D] in q's dtype.
    """
    extraction = _extraction_at(state, layer_index)
    if extraction is not None:
        out, noun_maps = _fused(kernels.cross_attention_with_noun_maps, q)(
            q, k, v, extraction.noun_tokens, maps_batch=extraction.batch_index)
        frames, height, width = extraction.grid
        extraction.noun_maps = noun_maps[:, :frames * height * width].unflatten(1, (frames, height * width))
        return out
    modulation = state.modulation if state is not None else None
    if modulation is not None:
        return modulated_cross_attention(q, k, v, modulation)
    return _sdpa(q, k, v)


def modulated_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              modulation: Modulation) -> torch.Tensor:
    """Cross-attention with NUMINA's layout bias on batch row `modulation.batch_index`.

    q: [B, L, H, D], k, v: [B, T, H, D] as for `cross_attention`. Every row is first computed plainly
    (SDPA); then the rows of the plan's modulated queries (the only ones with a non-zero bias) are
    computed again with their compact bias [M, T] by the column-bias kernel and written over them.
    The cost of the biased part grows with the modulated area, not with the video.
    """
    out = _sdpa(q, k, v)
    row, plan = modulation.batch_index, modulation.plan
    bias = layout_bias(plan, q[row], k[row], modulation.delta, modulation.config)            # [M, T]
    modulated_q = q[row].index_select(0, plan.modulated_queries).unsqueeze(0)                 # [1, M, H, D]
    biased = _fused(kernels.cross_attention_with_column_bias, q)(
        modulated_q, k[row:row + 1], v[row:row + 1], plan.bias_columns, bias)
    out[row].index_copy_(0, plan.modulated_queries, biased[0])
    return out
