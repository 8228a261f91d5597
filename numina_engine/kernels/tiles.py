"""Launch tiles of the attention kernels on the GPU, by kernel and head_dim, in one table.

The head_dim-128 entries of the bf16 kernels (Wan2.1's heads) are the tiles chosen on the H100 before
this table existed (docs/MEASUREMENTS.md); bench/sweep_attention_tiles.py times the candidates at
Wan2.1-1.3B's real shape and writes docs/results/attention_tiles.json, but has not been run yet. Smaller head sizes take smaller tiles (only the tests and tiny models use them). Triton's
interpreter always uses _triton.INTERPRETER_CONFIG.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ._triton import LaunchConfig

_SMALL = LaunchConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)

ATTENTION_TILES: dict[str, dict[int, LaunchConfig]] = {
    # one flash-attention pass over all keys (+ within-frame statistics)
    "attention_with_frame_lse": {
        16: _SMALL, 32: _SMALL,
        64: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        128: LaunchConfig(block_m=128, block_n=128, num_warps=8, num_stages=3),
    },
    # bound by writing the float32 maps, not by its tiles
    "frame_attention_maps": {
        16: _SMALL, 32: _SMALL,
        64: LaunchConfig(block_m=64, block_n=128, num_warps=4, num_stages=2),
        128: LaunchConfig(block_m=64, block_n=128, num_warps=4, num_stages=2),
    },
    "cross_attention_with_noun_maps": {
        16: _SMALL, 32: _SMALL,
        64: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        128: LaunchConfig(block_m=128, block_n=32, num_warps=4, num_stages=3),
    },
    "cross_attention_with_column_bias": {
        16: _SMALL, 32: _SMALL,
        64: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        128: LaunchConfig(block_m=128, block_n=128, num_warps=8, num_stages=2),
    },
    # e4m3 Q/K/V/P on the FP8 tensor cores (kernels/fp8_attention.py; BLOCK_M / BLOCK_N are also its
    # quantisation blocks; keyed by the padded head size, fp8_attention.padded_head_dim: 32, 64 or 128).
    # 128: the fastest tile of both H200 sweeps (docs/results/fp8_sweep_h200.json: 16.72 ms with TMA loads,
    # FP8_VARIANT below). 32 and 64: not timed (no Wan2.1 model has such heads; the demo model's 48 is
    # stored as 64).
    "fp8_attention": {
        32: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        64: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        128: LaunchConfig(block_m=64, block_n=128, num_warps=4, num_stages=3),
    },
}

# The candidates bench/sweep_attention_tiles.py times (block_m, block_n, num_warps, num_stages).
SWEEP_CANDIDATES = tuple(LaunchConfig(*c) for c in (
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
    (128, 128, 8, 2), (128, 128, 8, 3)))



@dataclass(frozen=True)
class Fp8Variant:
    """How fp8_attention's kernel runs its key loop (each a compile-time switch of the one kernel)."""
    tma: bool = False              # Q, K, V tiles through Hopper's TMA (host tensor descriptors), not pointer loads
    warp_specialize: bool = False  # tl.range(warp_specialize=True): Triton's automatic producer/consumer warps
    block_pv: bool = False         # each key block's P V in a fresh accumulator, added to acc in float32
    half_exp: bool = False         # the probabilities' exp2 in float16 pairs (ex2.approx.f16x2), not float32


# The variant fp8_attention runs unless told otherwise: Q/K/V tiles through TMA on Hopper and newer (sm_90+:
# 16.72 ms vs 18.00 ms with pointer loads in the stop-20 sweep, docs/results/fp8_sweep_h200.json; warp
# specialisation on top 16.76 ms, float16 exp2 slower everywhere), pointer loads below (Ada has no TMA).
FP8_VARIANT = Fp8Variant(tma=True)
FP8_VARIANT_WITHOUT_TMA = Fp8Variant()

# The candidates bench/fp8_attention.py --sweep times for fp8_attention at head_dim 128:
# (block_m, block_n, num_warps, num_stages), variant.
_PLAIN, _TMA, _TMA_WS = Fp8Variant(), Fp8Variant(tma=True), Fp8Variant(tma=True, warp_specialize=True)
_PV, _TMA_WS_PV = Fp8Variant(block_pv=True), Fp8Variant(tma=True, warp_specialize=True, block_pv=True)
_HALF = {variant: replace(variant, half_exp=True) for variant in (_PLAIN, _TMA_WS, _PV, _TMA_WS_PV)}
FP8_SWEEP_CANDIDATES = tuple((LaunchConfig(*c), variant) for c, variant in (
    ((64, 128, 4, 3), _PLAIN), ((64, 128, 4, 2), _PLAIN), ((128, 64, 4, 3), _PLAIN), ((128, 128, 8, 3), _PLAIN),
    ((64, 128, 4, 3), _PV), ((64, 128, 4, 3), _TMA), ((64, 128, 4, 3), _TMA_WS), ((128, 128, 8, 3), _TMA_WS),
    ((64, 128, 4, 3), _TMA_WS_PV), ((128, 128, 8, 3), _TMA_WS_PV),
    ((64, 128, 4, 3), _HALF[_PLAIN]), ((128, 64, 4, 3), _HALF[_PLAIN]), ((128, 128, 8, 3), _HALF[_PLAIN]),
    ((64, 128, 4, 3), _HALF[_PV]), ((64, 128, 4, 3), _HALF[_TMA_WS]), ((128, 128, 8, 3), _HALF[_TMA_WS]),
    ((64, 128, 4, 3), _HALF[_TMA_WS_PV]), ((128, 128, 8, 3), _HALF[_TMA_WS_PV]), ((128, 128, 8, 2), _HALF[_TMA_WS_PV])))


def gpu_tiles(kernel: str, head_dim: int, override: LaunchConfig | None = None) -> LaunchConfig:
    """The table's tiles of `kernel` for `head_dim`, or `override` (the sweep's candidates)."""
    return override if override is not None else ATTENTION_TILES[kernel][head_dim]
