"""The one attention interface the Wan DiT calls.

Every self- and cross-attention of `WanDiT` goes through these two functions, with the block's
`layer_index` and the per-forward-call `state` (NUMINA's per-run state travels in it), so that
attention-map extraction and cross-attention modulation can be routed here without touching the
model. The plain path is PyTorch's scaled-dot-product attention with the default 1/sqrt(D) scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over [B, L, H, D] inputs; returns [B, Lq, H, D] in q's dtype."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                         v.transpose(1, 2).contiguous())
    return out.transpose(1, 2)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int, state) -> torch.Tensor:
    """Self-attention over the video tokens of block `layer_index`.

    q, k, v: [B, L, H, D] (RoPE already applied to q and k), all in the model's compute dtype.
    Returns [B, L, H, D] in the same dtype. `state` is the per-forward-call state object or None;
    the plain path does not read it.
    """
    return _sdpa(q, k, v)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int, state) -> torch.Tensor:
    """Cross-attention of block `layer_index` from video tokens to text tokens.

    q: [B, L, H, D] video queries; k, v: [B, T, H, D] text keys/values (T = text_len, 512 for Wan,
    zero-padded tokens included, as Wan attends to all of them). Returns [B, L, H, D] in q's dtype.
    `state` is the per-forward-call state object or None; the plain path does not read it.
    """
    return _sdpa(q, k, v)
