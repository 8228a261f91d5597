"""NUMINA's cross-attention modulation as a compact bias over (modulated query, noun token).

The authors (H-EmbodVis/NUMINA, numina/modulation.py build_cross_attention_bias, used by
wan/modules/attention.py numina_cross_attention_modulate) add a dense [Lq, Lk] bias to the
conditional pass's cross-attention logits. Only the columns of the nouns' text tokens are ever
non-zero, and only in the rows of queries that a refined layout removes or adds, so this module keeps
those M rows and T columns alone: `layout_bias` returns [M, T] for the plan's `modulated_queries`, and
the attention interface recomputes only those rows' attention with the bias (every other row's
attention is plain).

For query i in frame f and a column j of noun n (delta = modulation strength of the step):
* i removed for n (label -1):                   bias = -suppress_scale * delta
* i added for n (label >= 100), no reference:   bias = +circle_bias_k * delta
* i added for n, frame f has a reference:       bias = delta * m[n, f] - s(i, j)
  where s(i, j) = (1/H) * sum_heads scale * <q_h(i), k_h(j)> is the head-averaged scaled
  logit and m[n, f] the mean of s over the reference pixels of (n, f) and the columns of n;
  the reference pixels are the smallest existing instance (labels 1..99, ties: lowest id) of
  a frame where something is added.
* otherwise (and for padding rows past F*h*w): 0.
Since s is linear in q and k, m[n, f] = scale / H * <mean of q over the reference pixels, mean of k over
n's columns>: one pass over the frame's queries, whatever the size of the reference instance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LABEL_ADDED_BASE, LABEL_REMOVED, NuminaConfig

__all__ = ["ModulationPlan", "bias_for_queries", "build_modulation_plan", "layout_bias", "reference_sums"]


@dataclass(frozen=True)
class ModulationPlan:
    """Device tensors of static shape describing where and how to modulate (CUDA-graph safe).

    Queries are numbered frame-major, then row-major over the token grid (num_frames, height, width).
    bias_columns: int32 [T], the nouns' text-token positions concatenated in noun order.
    column_noun: int64 [T], the noun index of each column.
    modulated_queries: int64 [M], ascending, the queries removed or added for at least one noun: the
        only rows with a non-zero bias. modulated_frame: int64 [M], their frames.
    removed_columns / circle_columns / referenced_columns: float32 [M, T] 0/1, per (modulated query,
        column): removed for the column's noun / added for it in a frame without a reference
        instance / added for it in a frame with one.
    reference_queries: int64 [R], ascending, the queries that are reference pixels of some (frame,
        noun), or None when they are more than half of all queries (then every query is read, rows
        0..L-1, which costs less than gathering them).
    reference_weights: [F * n_nouns, R (or L)] 0/1 in the queries' dtype (exact in any float dtype, so
        no cast per call), row f * n_nouns + n marks the reference
        pixels of (frame f, noun n) (none where the frame adds nothing for the noun);
        reference_count: float32 [F, n_nouns], their number, at least 1 (where there are none, the
        mean is 0 and no query uses it).
    noun_column_mean: float32 [n_nouns, T], 1/|columns of n| on the columns of noun n, else 0.
    has_reference: whether any (frame, noun) has reference pixels.
    nouns: noun names in plan order; min_key_length: the key length the columns need (max column + 1).
    """
    bias_columns: torch.Tensor
    column_noun: torch.Tensor
    modulated_queries: torch.Tensor
    modulated_frame: torch.Tensor
    removed_columns: torch.Tensor
    circle_columns: torch.Tensor
    referenced_columns: torch.Tensor
    reference_queries: torch.Tensor | None
    reference_weights: torch.Tensor
    reference_count: torch.Tensor
    noun_column_mean: torch.Tensor
    has_reference: bool
    nouns: tuple[str, ...]
    num_frames: int
    height: int
    width: int
    min_key_length: int

    @property
    def num_queries(self) -> int:
        return self.num_frames * self.height * self.width

    @property
    def num_modulated_queries(self) -> int:
        return self.modulated_queries.shape[0]

    @property
    def num_nouns(self) -> int:
        return len(self.nouns)

    @property
    def num_columns(self) -> int:
        return self.bias_columns.shape[0]


def build_modulation_plan(refined: dict[str, torch.Tensor], token_positions: dict[str, list[int]],
                          device: torch.device | str, dtype: torch.dtype = torch.float32) -> ModulationPlan | None:
    """Turn refined layouts into a ModulationPlan on `device`.

    refined: noun -> int32 [F, h, w] refined labels (0 background, 1..99 kept, -1 removed,
        100+ added); all nouns share one shape.
    token_positions: noun -> positions of the noun's tokens in the text sequence (distinct
        across all nouns, >= 0).
    dtype: the dtype of the cross-attention queries the plan will meet (the model's compute dtype).
    Returns None when no noun removes or adds anything in any frame.
    """
    nouns = tuple(refined)
    if not nouns:
        raise ValueError("refined must hold at least one noun")
    frames, height, width = _check_layouts(refined)
    columns, column_noun = _columns(nouns, token_positions)
    masks = [_noun_masks(refined[noun].to(device)) for noun in nouns]
    removed = torch.stack([m[0] for m in masks], dim=1)                              # [L, N] bool
    added = torch.stack([m[1] for m in masks], dim=1)                                # [L, N]
    reference = torch.stack([m[2] for m in masks], dim=1)                            # [F, N, h*w]
    modulated = (removed | added).any(dim=1)
    if not bool(modulated.any()):
        return None
    queries = modulated.nonzero().flatten()                                          # [M]
    column_noun_t = torch.tensor(column_noun, dtype=torch.int64, device=device)
    frame_has_reference = reference.any(dim=2)                                       # [F, N]
    tokens_per_frame = height * width
    query_frame = queries // tokens_per_frame
    has_reference = frame_has_reference[query_frame].index_select(1, column_noun_t)   # [M, T]
    removed_q = removed[queries].index_select(1, column_noun_t)
    added_q = added[queries].index_select(1, column_noun_t)
    counts = torch.bincount(column_noun_t, minlength=len(nouns)).to(torch.float32)   # columns per noun
    noun_column_mean = (torch.arange(len(nouns), device=device)[:, None] == column_noun_t[None, :]).float()
    return ModulationPlan(
        bias_columns=torch.tensor(columns, dtype=torch.int32, device=device),
        column_noun=column_noun_t,
        modulated_queries=queries,
        modulated_frame=query_frame,
        removed_columns=removed_q.to(torch.float32),
        circle_columns=(added_q & ~has_reference).to(torch.float32),
        referenced_columns=(added_q & has_reference).to(torch.float32),
        **_reference_rows(reference, dtype),
        reference_count=reference.sum(dim=2).clamp_min(1).to(torch.float32),
        noun_column_mean=noun_column_mean / counts[:, None],
        has_reference=bool(frame_has_reference.any()),
        nouns=nouns, num_frames=frames, height=height, width=width,
        min_key_length=max(columns) + 1)


def _reference_rows(reference: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    """reference bool [F, N, h*w] -> the plan's reference_queries and reference_weights (in `dtype`)."""
    frames, nouns, tokens_per_frame = reference.shape
    # [F * N, L]: (frame, noun) rows over all queries, non-zero only within the frame's own tokens.
    weights = torch.zeros(frames, nouns, frames, tokens_per_frame, dtype=dtype, device=reference.device)
    weights[torch.arange(frames), :, torch.arange(frames)] = reference.to(dtype)
    weights = weights.reshape(frames * nouns, frames * tokens_per_frame)
    used = reference.any(dim=1).reshape(-1)                                               # [L]
    if 2 * int(used.sum()) > used.numel():
        return {"reference_queries": None, "reference_weights": weights}
    queries = used.nonzero().flatten()
    return {"reference_queries": queries, "reference_weights": weights.index_select(1, queries)}


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


def _noun_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels int32 [F, h, w] -> removed bool [F*h*w], added bool [F*h*w], reference pixels bool
    [F, h*w] (the smallest existing instance of each frame that adds something)."""
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
    return removed.reshape(-1), added.reshape(-1), reference


def layout_bias(plan: ModulationPlan, q: torch.Tensor, k: torch.Tensor, delta: torch.Tensor,
                config: NuminaConfig) -> torch.Tensor:
    """The compact cross-attention bias of one step: float32 [M, T] for the plan's modulated queries
    (rows `plan.modulated_queries`, columns `plan.bias_columns`; rules: module docstring).

    q: [Lq, H, D] the conditional pass's cross-attention queries (after norm), Lq >= plan's
       L = F*h*w (rows past L are padding: never modulated).
    k: [Lk, H, D] its keys of the text tokens, Lk >= plan.min_key_length.
    delta: 0-dim float32 tensor on q's device, the step's modulation strength.
    Static shapes, no host synchronisation: safe to capture in a CUDA graph. Logits are accumulated
    and returned in float32.
    """
    if q.dim() != 3 or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q and k must be [L, H, D] with the same H, D; got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    queries, heads, head_dim = q.shape
    used = plan.num_queries
    if queries < used or k.shape[0] < plan.min_key_length:
        raise ValueError(f"q needs >= {used} rows and k >= {plan.min_key_length} rows for this plan, "
                         f"got {queries} and {k.shape[0]}")
    if delta.dim() != 0:
        raise ValueError(f"delta must be a 0-dim tensor, got shape {tuple(delta.shape)}")
    sums = None
    if plan.has_reference:
        flat_q = q[:used].reshape(used, heads * head_dim)
        reference_q = flat_q if plan.reference_queries is None else flat_q.index_select(0, plan.reference_queries)
        sums = reference_sums(plan.reference_weights, reference_q)
    return bias_for_queries(plan, q.index_select(0, plan.modulated_queries), k, sums, delta, config)


def reference_sums(weights: torch.Tensor, reference_q: torch.Tensor) -> torch.Tensor:
    """float32 [F * n_nouns, C]: per (frame, noun), the sum of the queries of its reference pixels.

    weights: [F * n_nouns, R] 0/1 (a plan's reference_weights, or some of its columns);
    reference_q: [R, C] the queries of those R rows (C = heads * head_dim). Sums of disjoint sets of
    rows add up to the sum of their union (sequence_shard.py adds the ranks' parts).
    """
    return _float32_matmul(weights.to(reference_q.dtype), reference_q)


def bias_for_queries(plan: ModulationPlan, q_modulated: torch.Tensor, k: torch.Tensor,
                     sums: torch.Tensor | None, delta: torch.Tensor, config: NuminaConfig) -> torch.Tensor:
    """float32 [M, T]: the bias of the plan's M modulated queries (see layout_bias).

    q_modulated: [M, H, D] the cross-attention queries of plan.modulated_queries; k: [Lk, H, D] text
    keys; sums: `reference_sums` over all reference pixels (None when not plan.has_reference).
    """
    heads, head_dim = q_modulated.shape[1:]
    delta = delta.to(torch.float32)
    channels = heads * head_dim
    scale = head_dim ** -0.5 / heads
    bias = torch.add(plan.circle_columns * config.circle_bias_k, plan.removed_columns,
                     alpha=-config.suppress_scale) * delta
    if not plan.has_reference:
        return bias
    k_columns = k.index_select(0, plan.bias_columns.long()).reshape(-1, channels)                 # [T, C]
    logits = _float32_matmul(q_modulated.reshape(-1, channels), k_columns.t()) * scale            # [M, T]
    # m[f, n] = scale * <sum of q over the reference pixels of (f, n), mean of k over n's columns> / count.
    sums = sums.view(plan.num_frames, plan.num_nouns, channels)
    noun_keys = plan.noun_column_mean @ k_columns.float()                                         # [N, C]
    reference_mean = (sums * noun_keys).sum(dim=-1) * scale / plan.reference_count                # [F, N]
    target = delta * reference_mean.index_select(1, plan.column_noun)                             # [F, T]
    return torch.addcmul(bias, target.index_select(0, plan.modulated_frame) - logits, plan.referenced_columns)


def _float32_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b ([M, K] @ [K, N], same dtype) accumulated and returned in float32.

    On CUDA, half-precision inputs go straight to a float32-output GEMM (no upcast copy of the large
    query matrix); elsewhere both sides are upcast first.
    """
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and b.dtype == a.dtype:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()
