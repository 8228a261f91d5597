"""NUMINA's extraction pass at the reference block: what the attention interface hands over to it.

At block `Extraction.layer`, the self-attention runs as `extract_self_attention` (the fused pass
that also yields within-frame softmax statistics; then, when `Extraction.with_self_maps`, the
within-frame maps, chunk by chunk of frames within a memory budget, each chunk's heads scored at
once, each frame's best head kept) and the cross-attention as `extract_noun_maps` (each counted
noun's probability map in the same pass). A layout that reads no self-attention maps (layout.py
`uses_self_maps`: layout_instances "focus_clusters") asks for none: the block's output is the same.
`NuminaConfig.extraction_block_output` picks the block's self-attention output: "full" (the true
attention) or "within_frame" (block-diagonal, as the NUMINA authors' extraction returns it, so
that block's cross-attention and noun maps see no cross-frame attention).

Under Ulysses (a `SequenceShard`) the self-attention pass gets all tokens and this rank's heads: the
maps and scores of those heads are made here, the scores gathered from every rank, and each frame's
best-head map summed in from the rank that holds the head; the cross-attention pass gets this rank's
token rows, whose noun maps are gathered.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import kernels
from ..kernels.dispatch import KernelChoice
from ..numina.config import NuminaConfig
from ..numina.head_scoring import score_heads
from .sequence_shard import SequenceShard

MAPS_BYTES_PER_ELEMENT = 4          # the within-frame maps are float32
# Bytes of within-frame maps one chunk of frames may hold (head scoring needs about half as much
# again for its bfloat16 copy with the exact PCA, and as much again for its float32 centred copy with
# head_pca "svd_lowrank"). 4 GiB holds Wan2.1-1.3B's 21 latent frames at 832x480 (12 heads,
# 1560 tokens a frame: 2.45 GB) in one chunk, where head scoring is fastest, and 2 frames of 14B at
# 1280x720 (40 heads, 3600 tokens a frame: 2.07 GB a frame, 43.5 GB for all 21).
DEFAULT_MAPS_BUDGET_BYTES = 4 * 2**30


def frame_maps_bytes(heads: int, frame_tokens: int) -> int:
    """Bytes of one frame's within-frame maps: heads x N x N float32 (N = frame_tokens)."""
    return heads * frame_tokens * frame_tokens * MAPS_BYTES_PER_ELEMENT


def frames_per_chunk(frames: int, heads: int, frame_tokens: int, budget_bytes: int) -> int:
    """Frames whose maps fit in `budget_bytes` (at least 1: a frame larger than the budget is a chunk
    of its own), at most `frames`."""
    if budget_bytes < 1:
        raise ValueError(f"the maps budget must be >= 1 byte, got {budget_bytes}")
    return max(1, min(frames, budget_bytes // frame_maps_bytes(heads, frame_tokens)))


@dataclass
class Extraction:
    """Take attention maps at block `layer` from batch row `batch_index` (the conditional pass).

    Inputs: `grid` = token grid (f, h, w); `noun_tokens` int32 [n_nouns, T] text positions of each
    counted noun, padded with -1; `config` (head scoring, `extraction_block_output`);
    `maps_budget_bytes` bounds the within-frame maps held at a time (see frames_per_chunk);
    `with_self_maps` False: no within-frame maps and no head scoring (the three fields below stay None).
    Filled in during the forward call:
      `self_maps`   float32 [f, N, N]  within-frame self-attention map of each frame's best head,
      `best_head`   int64   [f],  `head_scores` float32 [f, heads],
      `noun_maps`   float32 [n_nouns, f, N]  noun probability mass, mean over tokens and heads.
    """
    layer: int
    grid: tuple[int, int, int]
    noun_tokens: torch.Tensor
    config: NuminaConfig
    batch_index: int = 0
    maps_budget_bytes: int = DEFAULT_MAPS_BUDGET_BYTES
    with_self_maps: bool = True
    self_maps: torch.Tensor | None = None
    best_head: torch.Tensor | None = None
    head_scores: torch.Tensor | None = None
    noun_maps: torch.Tensor | None = None


def extract_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extraction: Extraction,
                           kernel_choice: KernelChoice, shard: SequenceShard | None = None) -> torch.Tensor:
    """The reference block's self-attention; fills extraction.self_maps, best_head, head_scores
    (with extraction.with_self_maps; without, only the output is computed, by the same kernel).

    q, k, v: [B, L, H, D] (RoPE applied), the video's f*h*w tokens first. Returns [B, L, H, D] in
    q's dtype: the full attention, or the within-frame one (config.extraction_block_output).
    With `shard`: H is this rank's heads and L the padded sequence (keys past shard.length left out);
    the extraction's fields hold all heads' results, the same on every rank.
    """
    frames, height, width = extraction.grid
    tokens = height * width
    heads = q.shape[2]
    total_heads = heads * shard.degree if shard is not None else heads
    first_head = shard.first_head(total_heads) if shard is not None else 0
    out, frame_lse = kernel_choice.pick(kernels.attention_with_frame_lse, q)(
        q, k, v, frame_tokens=tokens, num_frames=frames, kv_len=shard.length if shard is not None else None,
        stats_batch=extraction.batch_index, output=extraction.config.extraction_block_output)
    if not extraction.with_self_maps:
        return out
    maps_of = kernel_choice.pick(kernels.frame_attention_maps, q)
    chunk = frames_per_chunk(frames, heads, tokens, extraction.maps_budget_bytes)
    best_maps, best_heads, all_scores = [], [], []
    for start in range(0, frames, chunk):
        stop = min(start + chunk, frames)
        span = slice(start * tokens, stop * tokens)
        maps = maps_of(q[:, span], k[:, span], frame_lse[:, span], frame_tokens=tokens, num_frames=stop - start,
                       batch=extraction.batch_index)                                    # [c, H, N, N]
        scores, best = score_heads(maps, (height, width), extraction.config, kernels=kernel_choice,
                                   first_frame=start, total_frames=frames, first_head=first_head,
                                   total_heads=total_heads)                                 # [c, H], [c]
        frame_index = torch.arange(stop - start, device=maps.device)
        if shard is None:
            best_maps.append(maps[frame_index, best])
        else:                               # every rank's scores; each best map from its head's rank
            scores = shard.gather_heads(scores, dim=1)
            best = scores.argmax(dim=-1)
            local = best - first_head
            mine = ((local >= 0) & (local < heads)).to(maps.dtype)
            best_maps.append(shard.sum(maps[frame_index, local.clamp(0, heads - 1)] * mine[:, None, None]))
        best_heads.append(best)
        all_scores.append(scores)
        del maps
    extraction.self_maps = torch.cat(best_maps)
    extraction.best_head = torch.cat(best_heads)
    extraction.head_scores = torch.cat(all_scores)
    return out


def extract_noun_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extraction: Extraction,
                      kernel_choice: KernelChoice, shard: SequenceShard | None = None) -> torch.Tensor:
    """The reference block's cross-attention; fills extraction.noun_maps.

    q: [B, L, H, D] video queries (with `shard`: this rank's rows); k, v: [B, T, H, D] text
    keys/values. Returns [B, L, H, D] in q's dtype.
    """
    out, noun_maps = kernel_choice.pick(kernels.cross_attention_with_noun_maps, q)(
        q, k, v, extraction.noun_tokens, maps_batch=extraction.batch_index)
    if shard is not None:
        noun_maps = shard.gather_rows(noun_maps, dim=1)
    frames, height, width = extraction.grid
    extraction.noun_maps = noun_maps[:, :frames * height * width].unflatten(1, (frames, height * width))
    return out
