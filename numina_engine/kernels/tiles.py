"""Launch tiles of the attention kernels on the GPU, by kernel and head_dim, in one table.

The head_dim-128 entries (Wan2.1's heads) are the fastest candidates of bench/sweep_attention_tiles.py
at Wan2.1-1.3B's real shape (bf16, batch 1; run it on the target GPU, it writes
docs/results/attention_tiles.json with the device, date and commit, and prints the table to put
here). Smaller head sizes take smaller tiles (only the tests and tiny models use them). Triton's
interpreter always uses _triton.INTERPRETER_CONFIG.
"""
from __future__ import annotations

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
    # quantisation blocks). Not swept on a GPU yet: bench/fp8_attention.py --sweep times FP8_SWEEP_CANDIDATES.
    "fp8_attention": {
        64: LaunchConfig(block_m=128, block_n=64, num_warps=4, num_stages=3),
        128: LaunchConfig(block_m=128, block_n=128, num_warps=8, num_stages=3),
    },
}

# The candidates bench/sweep_attention_tiles.py times (block_m, block_n, num_warps, num_stages).
SWEEP_CANDIDATES = tuple(LaunchConfig(*c) for c in (
    (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
    (128, 128, 8, 2), (128, 128, 8, 3)))

# The candidates bench/fp8_attention.py --sweep times for fp8_attention at head_dim 128.
FP8_SWEEP_CANDIDATES = tuple(LaunchConfig(*c) for c in (
    (64, 128, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 8, 4),
    (128, 256, 8, 2), (256, 128, 8, 2)))


def gpu_tiles(kernel: str, head_dim: int, override: LaunchConfig | None = None) -> LaunchConfig:
    """The table's tiles of `kernel` for `head_dim`, or `override` (the sweep's candidates)."""
    return override if override is not None else ATTENTION_TILES[kernel][head_dim]
