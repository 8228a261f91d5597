"""The one attention interface the Wan DiT calls: it dispatches, NUMINA's work lives elsewhere.

Every self- and cross-attention of `WanDiT` goes through these two functions, with the block's
`layer_index`, the per-forward-call `ForwardState` (NUMINA's per-run state) and the model's
`KernelChoice` (kernels or PyTorch references), so extraction and modulation are routed here
without touching the model:

- plain calls: PyTorch SDPA (cuDNN / flash backends on a GPU); plain self-attention calls use
  kernels/fp8_attention.py instead when the KernelChoice says `attention="fp8"` (`--attention fp8`);
- the extraction block (`state.extraction.layer`): extraction.py's `extract_self_attention` and
  `extract_noun_maps`;
- modulated calls: plain cross-attention, then the modulated queries' rows again with the compact
  layout bias applied inside the column-bias kernel.

Under Ulysses sequence parallelism (`state.sequence`, sequence_shard.py) q, k, v arrive as this
rank's token rows with all heads: self-attention is wrapped in the all-to-all to (all tokens, this
rank's heads) and back; cross-attention runs on the local rows as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserInputError
from ..kernels import cross_attention_with_column_bias, fp8_attention
from ..kernels.dispatch import ATTENTION_CHOICES, AUTO, KernelChoice
from ..kernels.fp8_attention import FP8_HEAD_DIMS, fp8_unsupported_reason
from ..numina.modulation import bias_for_queries, layout_bias
from .extraction import extract_noun_maps, extract_self_attention
from .forward_state import Extraction, ForwardState, Modulation
from .sequence_shard import SequenceShard


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over [B, L, H, D] inputs; returns [B, Lq, H, D] in q's dtype."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def check_attention_setting(attention: str, device: torch.device, head_dim: int | None = None) -> None:
    """Refuse an `--attention` value the engine cannot run on `device` (UserInputError saying what to do):
    anything but ATTENTION_CHOICES, or "fp8" without FP8 tensor cores (no CUDA, compute capability < 8.9)
    or for a model whose `head_dim` the FP8 kernel does not take (FP8_HEAD_DIMS: multiples of 16 up to 128)."""
    if attention not in ATTENTION_CHOICES:
        raise UserInputError(f"--attention {attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")
    if attention == "fp8":
        reason = fp8_unsupported_reason(device)
        if reason is None and head_dim is not None and head_dim not in FP8_HEAD_DIMS:
            reason = f"the FP8 kernel takes attention heads of 16 to 128 channels in steps of 16, this model's are {head_dim}"
        if reason is not None:
            raise UserInputError(f"--attention fp8: {reason}. Use --attention bf16 (the default) here.")


def _extraction_at(state: ForwardState | None, layer_index: int) -> Extraction | None:
    if state is None or state.extraction is None or state.extraction.layer != layer_index:
        return None
    return state.extraction


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int,
                   state: ForwardState | None, kernels: KernelChoice = AUTO) -> torch.Tensor:
    """Self-attention over the video tokens of block `layer_index`.

    q, k, v: [B, L, H, D] (RoPE already applied to q and k), all in the model's compute dtype.
    Returns [B, L, H, D] in the same dtype: the full attention output (at the extraction block,
    the output that NuminaConfig.extraction_block_output names). Plain calls run SDPA, or the FP8
    kernel with `kernels.attention == "fp8"`; the extraction block's call is always exact. Under
    `state.sequence`, L is this rank's rows (see the module docstring).
    """
    shard = state.sequence if state is not None else None
    if shard is not None:                  # (local tokens, all heads) -> (all tokens, local heads)
        q, k, v = shard.to_heads(torch.cat((q, k, v))).chunk(3)
    extraction = _extraction_at(state, layer_index)
    if extraction is not None:
        out = extract_self_attention(q, k, v, extraction, kernels, shard)
    else:
        if shard is not None:              # padding keys left out
            k, v = k[:, :shard.length], v[:, :shard.length]
        out = kernels.pick(fp8_attention, q)(q, k, v) if kernels.attention == "fp8" else _sdpa(q, k, v)
    return out if shard is None else shard.to_tokens(out)


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer_index: int,
                    state: ForwardState | None, kernels: KernelChoice = AUTO) -> torch.Tensor:
    """Cross-attention of block `layer_index` from video tokens to text tokens.

    q: [B, L, H, D] video queries; k, v: [B, T, H, D] text keys/values (T = text_len, 512 for Wan,
    zero-padded tokens included, as Wan attends to all of them). Returns [B, L, H, D] in q's dtype.
    Under `state.sequence`, L is this rank's rows.
    """
    shard = state.sequence if state is not None else None
    extraction = _extraction_at(state, layer_index)
    if extraction is not None:
        return extract_noun_maps(q, k, v, extraction, kernels, shard)
    modulation = state.modulation if state is not None else None
    if modulation is not None and shard is not None:
        return sharded_modulated_cross_attention(q, k, v, modulation, shard, kernels=kernels)
    if modulation is not None:
        return modulated_cross_attention(q, k, v, modulation, kernels=kernels)
    return _sdpa(q, k, v)


def modulated_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, modulation: Modulation, *,
                              kernels: KernelChoice = AUTO) -> torch.Tensor:
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
    biased = kernels.pick(cross_attention_with_column_bias, q)(
        modulated_q, k[row:row + 1], v[row:row + 1], plan.bias_columns, bias)
    out[row].index_copy_(0, plan.modulated_queries, biased[0])
    return out


def sharded_modulated_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, modulation: Modulation,
                                      shard: SequenceShard, *, kernels: KernelChoice = AUTO) -> torch.Tensor:
    """`modulated_cross_attention` on this rank's rows under Ulysses: q [B, local, H, D] (rows
    shard.start ..), k, v [B, T, H, D]. The plan's reference sums are added up over the ranks (one
    all-reduce of [F * n_nouns, C] floats per call when the plan has reference pixels); then this
    rank's modulated rows are computed again with their bias."""
    out = _sdpa(q, k, v)
    row, plan = modulation.batch_index, modulation.plan
    rows = shard.plan_rows(plan)
    sums = shard.sum(rows.reference_sums(q[row])) if plan.has_reference else None     # every rank joins
    if rows.queries.shape[0] == 0:
        return out
    modulated_q = q[row].index_select(0, rows.queries)                                 # [M_local, H, D]
    bias = bias_for_queries(rows.plan, modulated_q, k[row], sums, modulation.delta, modulation.config)
    biased = kernels.pick(cross_attention_with_column_bias, q)(
        modulated_q.unsqueeze(0), k[row:row + 1], v[row:row + 1], plan.bias_columns, bias)
    out[row].index_copy_(0, rows.queries, biased[0])
    return out
