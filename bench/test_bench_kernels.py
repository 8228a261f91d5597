"""GPU benchmarks of the fused attention kernels at the real Wan2.1-1.3B shape (832x480x81: 21
frames of 30x52 tokens, 12 heads of 128, 512 text tokens), bfloat16, batch 1 and 2 (CFG batched).

Side by side in one run, per group: plain SDPA, the NUMINA authors' way (re-implemented below from
reading H-EmbodVis/NUMINA wan/modules/attention.py, numina/head_selection.py and
numina/modulation.py: Python loops over frames and heads, svd_lowrank head scoring, a dense
[Lq, 512] bias built frame by frame) and ours. Times are medians of CUDA events (printed as a
table at the end of the run); pytest-benchmark also records synchronised wall-clock rounds.
Skipped without a CUDA GPU. How to run: bench/README.md. Markdown report: bench/kernels_report.py.
"""
from __future__ import annotations

import functools
import math
import statistics
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numina_engine.kernels import (
    attention_with_frame_lse,
    cross_attention_with_column_bias,
    cross_attention_with_noun_maps,
    frame_attention_maps,
)
from numina_engine.kernels.dispatch import KernelChoice
from numina_engine.numina.config import NuminaConfig

FRAMES, GRID_HW, HEADS, HEAD_DIM, TEXT_LEN = 21, (30, 52), 12, 128, 512
FRAME_TOKENS = GRID_HW[0] * GRID_HW[1]
VIDEO_LEN = FRAMES * FRAME_TOKENS
NOUN_TOKENS = {"cat": [5], "dogs": [9, 10, 11]}   # two nouns, one of three tokens
MODULATED_STEP = 0                               # a denoising step where the modulation is on
CONFIG = NuminaConfig()
TRITON = KernelChoice("triton")                  # the kernels, whether or not autograd is recording


# ---------------------------------------------------------------- timing and inputs

def gpu_median_ms(fn: Callable[[], object], *, budget_ms: float = 1500.0, min_runs: int = 3,
                  max_runs: int = 200) -> float:
    """Median milliseconds of fn() by CUDA events, after one warm-up call (compilation).

    The calls are queued back to back (no synchronisation between them), so a GPU-bound fn is
    timed on the GPU; a host-bound fn (Python loops, .item()) is timed with its host stalls.
    """
    fn()
    torch.cuda.synchronize()
    first_start, first_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    first_start.record()
    fn()
    first_end.record()
    first_end.synchronize()
    runs = int(min(max_runs, max(min_runs, budget_ms // max(first_start.elapsed_time(first_end), 1e-3))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in zip(starts, ends))


@functools.lru_cache(maxsize=None)
def self_attention_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bf16 q, k, v [B, 32760, 12, 128] on the GPU (q sharpened x2, like trained logits)."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    shape = (batch, VIDEO_LEN, HEADS, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=gen, device="cuda") for _ in range(3))
    return (2.0 * q).bfloat16(), k.bfloat16(), v.bfloat16()


@functools.lru_cache(maxsize=None)
def cross_attention_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bf16 video queries [B, 32760, 12, 128] and text keys/values [B, 512, 12, 128]."""
    gen = torch.Generator(device="cuda").manual_seed(100 + batch)
    q = torch.randn(batch, VIDEO_LEN, HEADS, HEAD_DIM, generator=gen, device="cuda")
    k, v = (torch.randn(batch, TEXT_LEN, HEADS, HEAD_DIM, generator=gen, device="cuda") for _ in range(2))
    return (2.0 * q).bfloat16(), k.bfloat16(), v.bfloat16()


def noun_token_tensor() -> torch.Tensor:
    """int32 [n_nouns, T] token positions padded with -1."""
    width = max(len(t) for t in NOUN_TOKENS.values())
    return torch.tensor([t + [-1] * (width - len(t)) for t in NOUN_TOKENS.values()], dtype=torch.int32,
                        device="cuda")


def synthetic_layouts() -> dict[str, np.ndarray]:
    """Refined layouts per noun, int32 [F, 30, 52]: 1 an existing instance (noun 0 only, so the
    other noun takes the circle-template branch), -1 a removed one, 100 an added one; they drift
    with the frame."""
    yy, xx = np.mgrid[:GRID_HW[0], :GRID_HW[1]]
    layouts = {}
    for index, noun in enumerate(NOUN_TOKENS):
        labels = np.zeros((FRAMES, *GRID_HW), dtype=np.int32)
        for f in range(FRAMES):
            drift = f % 5
            if index == 0:
                labels[f][(yy - 8) ** 2 + (xx - 10 - drift) ** 2 <= 16] = 1
            labels[f][(yy - 22) ** 2 + (xx - 40 + drift) ** 2 <= 9] = -1
            labels[f][(yy - 15) ** 2 + (xx - 26 - drift) ** 2 <= 25] = 100
        layouts[noun] = labels
    return layouts


def plain_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA on [B, L, H, D] tensors (the model's layout)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------- the authors' way

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).reshape(1, 1, 3, 3)
_SOBEL_Y = _SOBEL_X.transpose(-1, -2).contiguous()


def authors_score_head(attn: torch.Tensor, config: NuminaConfig) -> float:
    """The authors' per-map head score: svd_lowrank PCA to gray, then std + block variance + Sobel
    (each read back with .item(), as they do). attn: [N, N] float32."""
    h, w = GRID_HW
    centred = attn - attn.mean(dim=0, keepdim=True)
    u, s, _ = torch.svd_lowrank(centred, q=3)
    components = u * s.unsqueeze(0)
    for c in range(3):
        column = components[:, c]
        low, high = column.min(), column.max()
        if high - low > 1e-8:
            components[:, c] = (column - low) / (high - low)
        else:
            components[:, c] = 0.5
    gray = 0.299 * components[:, 0] + 0.587 * components[:, 1] + 0.114 * components[:, 2]
    image = gray.reshape(1, 1, h, w)
    spread = gray.std().item()
    bh, bw = max(1, h // config.sa_block_grid), max(1, w // config.sa_block_grid)
    cropped = image[:, :, :h // bh * bh, :w // bw * bw]
    block_variance = (F.avg_pool2d(cropped, (bh, bw), stride=(bh, bw)) * (bh * bw)).var().item()
    sobel_x, sobel_y = _SOBEL_X.to(attn.device), _SOBEL_Y.to(attn.device)
    edges = torch.sqrt(F.conv2d(image, sobel_x, padding=1) ** 2 + F.conv2d(image, sobel_y, padding=1) ** 2)
    edge_clarity = edges.mean().item()
    return config.sa_alpha * spread + config.sa_beta * block_variance + config.sa_gamma * edge_clarity


def authors_self_attention_extract(q, k, v, config: NuminaConfig):
    """The authors' extraction pass: per frame, per head, attention within the frame only (their
    output), a softmax map scored on the spot, the best map copied to the host."""
    batch, seq_len, heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    q_t, k_t, v_t = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    output = torch.zeros(batch, heads, seq_len, head_dim, dtype=q.dtype, device=q.device)
    best = {}
    for f in range(FRAMES):
        frame = slice(f * FRAME_TOKENS, (f + 1) * FRAME_TOKENS)
        best_head, best_score, best_map = -1, -float("inf"), None
        for head in range(heads):
            scores = q_t[:, head:head + 1, frame] @ k_t[:, head:head + 1, frame].transpose(-2, -1) * scale
            weights = torch.softmax(scores, dim=-1)
            output[:, head:head + 1, frame] = weights @ v_t[:, head:head + 1, frame]
            attn = weights[0, 0].float()
            score = authors_score_head(attn, config)
            if score > best_score:
                best_head, best_score, best_map = head, score, attn.cpu().numpy()
        best[f] = (best_head, best_map)
        if (f + 1) % 4 == 0:
            torch.cuda.empty_cache()
    torch.cuda.empty_cache()
    return output.transpose(1, 2).contiguous(), best


def authors_cross_attention_extract(q, k, v):
    """The authors' cross-attention extraction: per head, a dense float32 softmax, then per noun
    and per frame a head-summed noun response; maps copied to the host at the end."""
    batch, q_len, heads, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    q_t, k_t, v_t = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    output = torch.zeros(batch, heads, q_len, head_dim, dtype=q.dtype, device=q.device)
    accum = {noun: [torch.zeros(FRAME_TOKENS, dtype=torch.float32, device=q.device) for _ in range(FRAMES)]
             for noun in NOUN_TOKENS}
    for head in range(heads):
        scores = q_t[:, head:head + 1] @ k_t[:, head:head + 1].transpose(-2, -1) * scale
        weights = torch.softmax(scores.float(), dim=-1)
        output[:, head:head + 1] = weights.to(q.dtype) @ v_t[:, head:head + 1]
        video = weights[0, 0, :VIDEO_LEN]
        for noun, tokens in NOUN_TOKENS.items():
            token_index = torch.tensor(tokens, dtype=torch.long, device=q.device)
            for f in range(FRAMES):
                accum[noun][f] += video[f * FRAME_TOKENS:(f + 1) * FRAME_TOKENS][:, token_index].mean(dim=1)
        if (head + 1) % 4 == 0:
            torch.cuda.empty_cache()
    maps = {noun: [(a / heads).cpu().numpy().reshape(GRID_HW) for a in frames] for noun, frames in accum.items()}
    return output.transpose(1, 2).contiguous(), maps


def authors_frame_modulation(labels: np.ndarray) -> list[dict[str, np.ndarray | bool]]:
    """Per frame: removed / added pixels and the smallest existing instance as reference (their
    build_modulation_data; host preprocessing, not timed)."""
    frames = []
    for layout in labels:
        flat = layout.ravel()
        removed, added = np.where(flat == -1)[0], np.where(flat >= 100)[0]
        existing_ids = sorted(set(flat[(flat >= 1) & (flat <= 99)].tolist()))
        reference = np.array([], dtype=np.int64)
        if existing_ids and len(added) > 0:
            reference = min((np.where(flat == i)[0] for i in existing_ids), key=len)
        frames.append(dict(removed=removed, added=added, has_reference=bool(existing_ids), reference=reference))
    return frames


def authors_build_cross_attention_bias(q_t, k_t, modulation, config: NuminaConfig, step_index: int):
    """Their dense [1, 1, Lq, Lk] float32 bias, filled noun by noun and frame by frame (with a
    .item() per frame that has a reference). q_t, k_t: [B, H, L, D]."""
    delta = config.delta(step_index)
    q_len, kv_len, head_dim = q_t.shape[2], k_t.shape[2], q_t.shape[3]
    scale = 1.0 / math.sqrt(head_dim)
    bias = torch.zeros(1, 1, q_len, kv_len, dtype=torch.float32, device=q_t.device)
    for noun, frames in modulation.items():
        token_index = torch.tensor(NOUN_TOKENS[noun], dtype=torch.long, device=q_t.device)
        for f, info in enumerate(frames):
            offset = f * FRAME_TOKENS
            if len(info["removed"]) > 0:
                rows = torch.from_numpy(info["removed"] + offset).to(q_t.device)
                bias[0, 0, rows.unsqueeze(1), token_index.unsqueeze(0)] += -config.suppress_scale * delta
            if len(info["added"]) > 0 and not info["has_reference"]:
                rows = torch.from_numpy(info["added"] + offset).to(q_t.device)
                bias[0, 0, rows.unsqueeze(1), token_index.unsqueeze(0)] += config.circle_bias_k * delta
            if len(info["added"]) > 0 and info["has_reference"] and len(info["reference"]) > 0:
                reference_rows = torch.from_numpy(info["reference"] + offset).to(q_t.device)
                rows = torch.from_numpy(info["added"] + offset).to(q_t.device)
                token_keys = k_t[:, :, token_index]
                mean_reference = ((q_t[:, :, reference_rows] @ token_keys.transpose(-2, -1)) * scale).mean().item()
                added_scores = ((q_t[:, :, rows] @ token_keys.transpose(-2, -1)) * scale).mean(dim=(0, 1))
                bias[0, 0, rows.unsqueeze(1), token_index.unsqueeze(0)] = (mean_reference * delta - added_scores).float()
    return bias


def authors_cross_attention_modulate(q, k, v, modulation, config: NuminaConfig, step_index: int):
    """Their modulated cross-attention: the dense bias, then one SDPA call with it as attn_mask."""
    q_t, k_t, v_t = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = authors_build_cross_attention_bias(q_t, k_t, modulation, config, step_index)
    return F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=bias).transpose(1, 2).contiguous()


# ---------------------------------------------------------------- ours

def ours_extraction(q, k, v, output: str = "full"):
    """The engine's extraction block self-attention (engine/extraction.py, the Triton kernels): the
    forward with frame statistics (its output "full" or "within_frame"), the within-frame maps of
    batch element 0, head scores, each frame's best map kept."""
    from numina_engine.engine.extraction import Extraction, extract_self_attention

    extraction = Extraction(layer=0, grid=(FRAMES, *GRID_HW), noun_tokens=noun_token_tensor(),
                            config=CONFIG.with_overrides(extraction_block_output=output))
    return extract_self_attention(q, k, v, extraction, TRITON), extraction


def compact_bias_from_dense(dense_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias_columns int32 [T], bias float32 [Lq, T]) holding the dense bias's noun-token columns."""
    columns = [t for tokens in NOUN_TOKENS.values() for t in tokens]
    column_index = torch.tensor(columns, dtype=torch.long, device=dense_bias.device)
    return column_index.to(torch.int32), dense_bias[0, 0][:, column_index].contiguous()


@functools.lru_cache(maxsize=None)
def authors_dense_bias(batch: int) -> torch.Tensor:
    q, k, _ = cross_attention_inputs(batch)
    modulation = {noun: authors_frame_modulation(labels) for noun, labels in synthetic_layouts().items()}
    return authors_build_cross_attention_bias(q.transpose(1, 2), k.transpose(1, 2), modulation, CONFIG,
                                              MODULATED_STEP)


def ours_layout_biased_attention(batch: int) -> Callable[[], torch.Tensor]:
    """The engine's modulated cross-attention (engine/attention.py): plain SDPA for every row, then
    the modulated queries of row 0 again with their compact bias (layout_bias + the column-bias kernel)."""
    from numina_engine.engine.attention import modulated_cross_attention
    from numina_engine.engine.forward_state import Modulation
    from numina_engine.numina.modulation import build_modulation_plan

    q, k, v = cross_attention_inputs(batch)
    layouts = {noun: torch.from_numpy(labels) for noun, labels in synthetic_layouts().items()}
    plan = build_modulation_plan(layouts, NOUN_TOKENS, "cuda", torch.bfloat16)
    delta = torch.tensor(CONFIG.delta(MODULATED_STEP), dtype=torch.float32, device="cuda")
    modulation = Modulation(plan=plan, delta=delta, config=CONFIG, batch_index=0)
    return lambda: modulated_cross_attention(q, k, v, modulation, kernels=TRITON)


# ---------------------------------------------------------------- the cases

SELF_GROUP = "self-attention extraction (maps + head scores)"
NOUN_GROUP = "noun-map cross-attention"
BIAS_GROUP = "layout-biased cross-attention"


def _self_case(name: str) -> Callable[[int], Callable[[], object]]:
    def build(batch: int):
        q, k, v = self_attention_inputs(batch)
        layout = dict(frame_tokens=FRAME_TOKENS, num_frames=FRAMES)
        if name == "plain SDPA":
            return lambda: plain_sdpa(q, k, v)
        if name == "authors: frame x head loops, svd_lowrank scoring":
            return lambda: authors_self_attention_extract(q, k, v, CONFIG)
        if name == "ours: attention_with_frame_lse":
            return lambda: attention_with_frame_lse(q, k, v, **layout)
        if name == "ours: frame_attention_maps":
            _, frame_lse = attention_with_frame_lse(q, k, v, **layout)
            return lambda: frame_attention_maps(q, k, frame_lse, **layout)
        if name == "ours: score_heads":
            from numina_engine.numina.head_scoring import score_heads
            _, frame_lse = attention_with_frame_lse(q, k, v, **layout)
            maps = frame_attention_maps(q, k, frame_lse, **layout)
            return lambda: score_heads(maps, grid_hw=GRID_HW, config=CONFIG, kernels=TRITON)
        if name == "ours: kernel + maps + head scoring":
            return lambda: ours_extraction(q, k, v)
        assert name == "ours: kernel + maps + head scoring, within-frame block output", name
        return lambda: ours_extraction(q, k, v, output="within_frame")
    return build


def _noun_case(name: str) -> Callable[[int], Callable[[], object]]:
    def build(batch: int):
        q, k, v = cross_attention_inputs(batch)
        if name == "plain SDPA":
            return lambda: plain_sdpa(q, k, v)
        if name == "authors: head loops, per-noun per-frame sums":
            return lambda: authors_cross_attention_extract(q, k, v)
        assert name == "ours: cross_attention_with_noun_maps", name
        noun_tokens = noun_token_tensor()
        return lambda: cross_attention_with_noun_maps(q, k, v, noun_tokens)
    return build


def _bias_case(name: str) -> Callable[[int], Callable[[], object]]:
    def build(batch: int):
        q, k, v = cross_attention_inputs(batch)
        if name == "plain SDPA":
            return lambda: plain_sdpa(q, k, v)
        if name == "authors: dense bias by frame loops + SDPA":
            modulation = {noun: authors_frame_modulation(labels) for noun, labels in synthetic_layouts().items()}
            return lambda: authors_cross_attention_modulate(q, k, v, modulation, CONFIG, MODULATED_STEP)
        if name == "authors: SDPA with the dense bias prebuilt":
            dense = authors_dense_bias(batch)
            q_t, k_t, v_t = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            return lambda: F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=dense)
        if name == "ours: cross_attention_with_column_bias (bias prebuilt)":
            columns, bias = compact_bias_from_dense(authors_dense_bias(batch))
            return lambda: cross_attention_with_column_bias(q, k, v, columns, bias)
        assert name == "ours: modulated_cross_attention (the engine's call)", name
        return ours_layout_biased_attention(batch)
    return build


CASES: list[tuple[str, str, Callable[[int], Callable[[], object]]]] = [
    *[(SELF_GROUP, name, _self_case(name)) for name in (
        "plain SDPA",
        "authors: frame x head loops, svd_lowrank scoring",
        "ours: attention_with_frame_lse",
        "ours: frame_attention_maps",
        "ours: score_heads",
        "ours: kernel + maps + head scoring",
        "ours: kernel + maps + head scoring, within-frame block output",
    )],
    *[(NOUN_GROUP, name, _noun_case(name)) for name in (
        "plain SDPA",
        "authors: head loops, per-noun per-frame sums",
        "ours: cross_attention_with_noun_maps",
    )],
    *[(BIAS_GROUP, name, _bias_case(name)) for name in (
        "plain SDPA",
        "authors: dense bias by frame loops + SDPA",
        "authors: SDPA with the dense bias prebuilt",
        "ours: cross_attention_with_column_bias (bias prebuilt)",
        "ours: modulated_cross_attention (the engine's call)",
    )],
]
BATCHES = (1, 2)
# Targets, as multiples of one plain SDPA call of the same group and batch (README); a case that
# misses its target fails (test_kernel_benchmark, bench/kernels_report.py).
TARGETS = {
    (SELF_GROUP, "ours: kernel + maps + head scoring"): 3.0,
    (SELF_GROUP, "ours: kernel + maps + head scoring, within-frame block output"): 3.0,
    (NOUN_GROUP, "ours: cross_attention_with_noun_maps"): 2.0,
    (BIAS_GROUP, "ours: cross_attention_with_column_bias (bias prebuilt)"): 2.0,
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs CUDA")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("group, name, build", [
    pytest.param(group, name, build, id=f"{group} | {name}", marks=pytest.mark.benchmark(group=group))
    for group, name, build in CASES
])
def test_kernel_benchmark(group, name, build, batch, benchmark, gpu_medians):
    fn = build(batch)
    median_ms = gpu_median_ms(fn)
    gpu_medians[f"{group}, B={batch}"][name] = median_ms
    benchmark.extra_info["gpu_median_ms"] = median_ms

    def synchronised():
        fn()
        torch.cuda.synchronize()
    rounds = int(min(50, max(3, 500.0 // max(median_ms, 1e-3))))
    benchmark.pedantic(synchronised, rounds=rounds, iterations=1, warmup_rounds=1)
    target = TARGETS.get((group, name))
    if target is not None:
        plain_ms = gpu_median_ms(build_plain_sdpa(group, batch))     # timed again: runs may be selected alone
        assert median_ms / plain_ms <= target, f"{median_ms:.3f} ms = {median_ms / plain_ms:.2f}x plain SDPA > {target}x"


def build_plain_sdpa(group: str, batch: int) -> Callable[[], object]:
    """The plain SDPA case of `group` at `batch`."""
    return next(build for g, name, build in CASES if g == group and name == "plain SDPA")(batch)
