"""NUMINA's cross-attention modulation as a compact bias over (query position, noun token).

The authors (H-EmbodVis/NUMINA, numina/modulation.py build_cross_attention_bias, used by
wan/modules/attention.py numina_cross_attention_modulate) add a dense [Lq, Lk] bias to the
conditional pass's cross-attention logits. Only the columns of the nouns' text tokens are ever
non-zero, so this module keeps those T columns alone: `layout_bias` returns [Lq, T] and the
attention kernel adds bias[i, j] to logit(i, bias_columns[j]) (columns are distinct).

For query i in frame f and a column j of noun n (delta = modulation strength of the step):
* i removed for n (label -1):                   bias = -suppress_scale * delta
* i added for n (label >= 100), no reference:   bias = +circle_bias_k * delta
* i added for n, frame f has a reference:       bias = delta * m[n, f] - s(i, j)
  where s(i, j) = (1/H) * sum_heads scale * <q_h(i), k_h(j)> is the head-averaged scaled
  logit and m[n, f] the mean of s over the reference pixels of (n, f) and the columns of n;
  the reference pixels are the smallest existing instance (labels 1..99, ties: lowest id) of
  a frame where something is added.
* otherwise (and for padding rows past F*h*w): 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LABEL_ADDED_BASE, LABEL_REMOVED, NuminaConfig

__all__ = [
    "QUERY_REMOVED", "QUERY_ADDED", "QUERY_REFERENCE",
    "ModulationPlan", "build_modulation_plan", "layout_bias",
]

# Bits of ModulationPlan.query_flags.
QUERY_REMOVED = 1
QUERY_ADDED = 2
QUERY_REFERENCE = 4


@dataclass(frozen=True)
class ModulationPlan:
    """Device tensors of static shape describing where and how to modulate (CUDA-graph safe).

    query_flags: uint8 [L, n_nouns], L = num_frames * height * width query tokens (frame-major,
        then row-major); bits QUERY_REMOVED / QUERY_ADDED / QUERY_REFERENCE per noun.
    frame_has_reference: bool [n_nouns, num_frames], True where the frame adds an instance and
        has reference pixels.
    bias_columns: int32 [T], the nouns' text-token positions concatenated in noun order.
    column_noun: int64 [T], the noun index of each column.
    nouns: noun names in plan order; num_frames, height, width: the token grid of the layouts;
    min_key_length: the key length the columns need (max column + 1).
    """
    query_flags: torch.Tensor
    frame_has_reference: torch.Tensor
    bias_columns: torch.Tensor
    column_noun: torch.Tensor
    nouns: tuple[str, ...]
    num_frames: int
    height: int
    width: int
    min_key_length: int
    # Derived once from the above, per (query, column), float32 [L, T] 0/1 unless noted, so that a
    # step's bias is a few elementwise ops: removed / added-without-reference / added-with-reference
    # queries, reference pixels of the column's noun; reference_pairs [F, T]: (reference pixel,
    # column) pairs of the column's noun in each frame (>= 1); same_noun [T, T]: 1 where two columns
    # belong to one noun.
    removed_columns: torch.Tensor
    circle_columns: torch.Tensor
    referenced_columns: torch.Tensor
    reference_columns: torch.Tensor
    reference_pairs: torch.Tensor
    same_noun: torch.Tensor

    @property
    def num_queries(self) -> int:
        return self.num_frames * self.height * self.width

    @property
    def num_nouns(self) -> int:
        return len(self.nouns)

    @property
    def num_columns(self) -> int:
        return self.bias_columns.shape[0]



def build_modulation_plan(refined: dict[str, torch.Tensor], token_positions: dict[str, list[int]],
                          device: torch.device | str) -> ModulationPlan | None:
    """Turn refined layouts into a ModulationPlan on `device`.

    refined: noun -> int32 [F, h, w] refined labels (0 background, 1..99 kept, -1 removed,
        100+ added); all nouns share one shape.
    token_positions: noun -> positions of the noun's tokens in the text sequence (distinct
        across all nouns, >= 0).
    Returns None when no noun removes or adds anything in any frame.
    """
    nouns = tuple(refined)
    if not nouns:
        raise ValueError("refined must hold at least one noun")
    shape = _check_layouts(refined)
    columns, column_noun = _columns(nouns, token_positions)
    flags, has_reference = [], []
    for noun in nouns:
        noun_flags, noun_has_reference = _noun_flags(refined[noun].to(device))
        flags.append(noun_flags)
        has_reference.append(noun_has_reference)
    query_flags = torch.stack(flags, dim=1)
    if not bool(((query_flags & (QUERY_REMOVED | QUERY_ADDED)) != 0).any()):
        return None
    frame_has_reference = torch.stack(has_reference, dim=0)
    column_noun_t = torch.tensor(column_noun, dtype=torch.int64, device=device)
    return ModulationPlan(
        query_flags=query_flags,
        frame_has_reference=frame_has_reference,
        bias_columns=torch.tensor(columns, dtype=torch.int32, device=device),
        column_noun=column_noun_t,
        nouns=nouns, num_frames=shape[0], height=shape[1], width=shape[2],
        min_key_length=max(columns) + 1,
        **_column_masks(query_flags, frame_has_reference, column_noun_t, shape))


def _column_masks(query_flags: torch.Tensor, frame_has_reference: torch.Tensor, column_noun: torch.Tensor,
                  shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The per-(query, column) masks of ModulationPlan, from its flags (see the field comments)."""
    frames, height, width = shape
    flags = query_flags.index_select(1, column_noun)                                         # [L, T]
    has_reference = frame_has_reference.t().index_select(1, column_noun)                       # [F, T]
    has_reference = has_reference.repeat_interleave(height * width, dim=0)                     # [L, T]
    added = (flags & QUERY_ADDED) != 0
    reference = ((flags & QUERY_REFERENCE) != 0).to(torch.float32)
    same_noun = (column_noun[:, None] == column_noun[None, :]).to(torch.float32)               # [T, T]
    reference_pixels = reference.view(frames, height * width, -1).sum(1)                      # [F, T]
    return {
        "removed_columns": ((flags & QUERY_REMOVED) != 0).to(torch.float32),
        "circle_columns": (added & ~has_reference).to(torch.float32),
        "referenced_columns": (added & has_reference).to(torch.float32),
        "reference_columns": reference,
        "reference_pairs": (reference_pixels * same_noun.sum(0)).clamp_min(1.0),
        "same_noun": same_noun,
    }


def _check_layouts(refined: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    shapes = {noun: tuple(labels.shape) for noun, labels in refined.items()}
    for noun, labels in refined.items():
        if labels.dim() != 3 or labels.dtype != torch.int32 or labels.numel() == 0:
            raise ValueError(f"refined[{noun!r}] must be a non-empty int32 [F, h, w] tensor, "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if int(labels.min()) < LABEL_REMOVED:
            raise ValueError(f"refined[{noun!r}] has labels below {LABEL_REMOVED}")
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all nouns' layouts must share one [F, h, w] shape, got {shapes}")
    return next(iter(shapes.values()))


def _columns(nouns: tuple[str, ...], token_positions: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    columns, column_noun = [], []
    for index, noun in enumerate(nouns):
        positions = token_positions.get(noun)
        if not positions:
            raise ValueError(f"no token positions for noun {noun!r}")
        if any(not isinstance(p, int) or p < 0 for p in positions):
            raise ValueError(f"token positions of {noun!r} must be ints >= 0, got {positions}")
        columns.extend(positions)
        column_noun.extend([index] * len(positions))
    if len(set(columns)) != len(columns):
        raise ValueError(f"token positions must be distinct across all nouns, got "
                         f"{ {noun: token_positions[noun] for noun in nouns} }")
    return columns, column_noun


def _noun_flags(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels int32 [F, h, w] -> (flags uint8 [F*h*w], frame_has_reference bool [F])."""
    frames = labels.shape[0]
    flat = labels.reshape(frames, -1)
    removed = flat == LABEL_REMOVED
    added = flat >= LABEL_ADDED_BASE
    existing = (flat > 0) & ~added
    existing_ids = torch.where(existing, flat, 0).long()
    areas = torch.zeros(frames, LABEL_ADDED_BASE, dtype=torch.int64, device=labels.device)
    areas.scatter_add_(1, existing_ids, existing.long())
    areas[:, 0] = 0
    smallest = torch.where(areas > 0, areas, torch.iinfo(torch.int64).max).argmin(dim=1)   # [F]
    frame_has_reference = existing.any(dim=1) & added.any(dim=1)
    reference = (flat == smallest[:, None]) & existing & frame_has_reference[:, None]
    flags = (removed.to(torch.uint8) * QUERY_REMOVED + added.to(torch.uint8) * QUERY_ADDED
             + reference.to(torch.uint8) * QUERY_REFERENCE)
    return flags.reshape(-1), frame_has_reference


def layout_bias(plan: ModulationPlan, q: torch.Tensor, k: torch.Tensor, delta: torch.Tensor,
                config: NuminaConfig) -> torch.Tensor:
    """The compact cross-attention bias of one step: float32 [Lq, T] (rules: module docstring).

    q: [Lq, H, D] the conditional pass's cross-attention queries (after norm), Lq >= plan's
       L = F*h*w (rows past L are padding and get 0).
    k: [Lk, H, D] its keys of the text tokens, Lk >= plan.min_key_length.
    delta: 0-dim float32 tensor on q's device, the step's modulation strength.
    Static shapes, no host synchronisation: safe to capture in a CUDA graph. The head-averaged
    logits are computed for the T columns only, in float32.
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q and k must be [L, H, D] with the same H, D; got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    queries, heads, head_dim = q.shape
    frames, tokens_per_frame = plan.num_frames, plan.height * plan.width
    used = plan.num_queries
    if queries < used or k.shape[0] < plan.min_key_length:
        raise ValueError(f"q needs >= {used} rows and k >= {plan.min_key_length} rows for this plan, "
                         f"got {queries} and {k.shape[0]}")
    if delta.dim() != 0:
        raise ValueError(f"delta must be a 0-dim tensor, got shape {tuple(delta.shape)}")
    delta = delta.to(torch.float32)
    scale = head_dim ** -0.5 / heads
    k_columns = k.index_select(0, plan.bias_columns.long()).reshape(-1, heads * head_dim)
    logits = _float32_logits(q[:used].reshape(used, heads * head_dim), k_columns) * scale           # [L, T]

    # m[n, f] per column: mean head-averaged logit over the noun's reference pixels and columns.
    reference_sum = (logits * plan.reference_columns).view(frames, tokens_per_frame, -1).sum(1)   # [F, T]
    target = delta * (reference_sum @ plan.same_noun) / plan.reference_pairs                      # [F, T]
    bias = (target[:, None, :] - logits.view(frames, tokens_per_frame, -1)).view(used, -1)
    bias = bias * plan.referenced_columns
    constant = plan.circle_columns * config.circle_bias_k - plan.removed_columns * config.suppress_scale
    bias = torch.addcmul(bias, constant, delta)
    if queries > used:
        bias = torch.cat([bias, bias.new_zeros(queries - used, bias.shape[1])], dim=0)
    return bias


def _float32_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries [L, C] @ keys [T, C]^T accumulated and returned in float32: [L, T].

    On CUDA, half-precision inputs go straight to a float32-output GEMM (no upcast copy of
    the large query matrix); elsewhere both sides are upcast first.
    """
    if queries.is_cuda and queries.dtype in (torch.bfloat16, torch.float16) and keys.dtype == queries.dtype:
        return torch.mm(queries, keys.t(), out_dtype=torch.float32)
    return queries.float() @ keys.float().t()
