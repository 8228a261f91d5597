"""FP8 (e4m3) self-attention for Hopper and Ada GPUs, SageAttention's idea in our own kernels.

`fp8_attention(q, k, v)` computes softmax(q k^T / sqrt(D)) v with both matrix products on FP8
tensor cores and float32 accumulation:

1. Quantise (one small kernel per tensor, scales computed on the GPU, no host sync):
   - q: per (batch, head, block of BLOCK_M queries) scale = amax / 448, q / scale rounded to e4m3;
   - k: first smoothed, k - mean over tokens (per batch, head, channel): q . mean is the same for
     every key of a query, so the softmax does not change, while the shared component that DiT keys
     carry no longer takes e4m3's range; then scaled per (batch, head, block of BLOCK_N keys);
   - v: per (batch, head, channel) scale over all tokens, stored transposed ([D, tokens]: the
     operand layout Hopper's FP8 tensor cores take). A per-channel scale (rather than per key
     block) is applied once to the output, so the P V product accumulates in the tensor core's
     float32 accumulator with no per-block rescale; V's outliers sit in channels.
   The quantised tensors are padded to whole blocks (zeros), so the attention kernel loads whole tiles.
2. Attend: flash-attention forward over the key blocks, online softmax in base 2 (exp2), logits
   = (q8 . k8) * q_scale * k_scale * log2(e) / sqrt(D) in float32; the probabilities, relative to
   the running row max, are scaled by 448 (e4m3's largest value, so that probabilities down to
   2^-15 of the row max stay in e4m3's normal range) and rounded to e4m3 for the P V product; the row sum is kept in float32 from the unrounded
   values; out = acc * v_scale / row sum, rounded once to the output dtype.

`fp8_attention_reference` does the same quantisation with torch ops (torch's float8_e4m3fn) and
the same blockwise online softmax in float32; `exact_attention` is float32 attention with no
quantisation. Both serve the tests and benchmarks; the reference is also the engine's fallback.

Rounding to e4m3. The quantisation kernels always round in float32 arithmetic (`round_to_e4m3`: round
to nearest even, saturating at 448), after which the cast is exact, and divide with tl.div_rn: their
output equals the torch reference's bit for bit (the reference divides once too,
`e4m3_multiplier` / `e4m3_scale`) in Triton's interpreter, where the tests check it; compiled on the
H200 too, once the sign of a negative value rounded to zero is set by bit operations (stop 19's
mismatches were all +0 written for -0: docs/MEASUREMENTS.md), and the cost is nil in a memory-bound kernel. Hardware casts are
not relied on there: Triton's interpreter (3.9) rounds float32 -> float8e4nv wrongly (a mantissa carry
into the next power of two halves the value, 1.98 -> 1.0; subnormals are off), and compiled
conversions are chosen per architecture (a path through float16 would round twice). In the attention kernel P is
cast in hardware when compiled (cvt.rn.satfinite on sm_90) and in software when interpreted
(ROUND_IN_SOFTWARE); its output is compared with the reference within a tolerance, not bitwise.

Loop variants (tiles.Fp8Variant, compile-time switches of the one kernel; bench/fp8_attention.py
--sweep times them): Q/K/V tiles through TMA (host tensor descriptors) or pointer loads; Triton's
automatic warp specialisation of the key loop; P V per key block into a fresh accumulator added in
float32 (Hopper's FP8 MMA accumulates with a truncated adder), or straight into the running one; the
probabilities' exp2 in float16 pairs (`exp2_in_half`: half the special-function issues; P is rounded to
e4m3 after, so float16's 11 bits lose nothing that e4m3's 4 keep), or in float32.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ._triton import (
    LOG2E,
    TRITON_AVAILABLE,
    TRITON_INTERPRETED,
    LaunchConfig,
    _kernel_constant,
    check_qkv,
    launch_config,
    new_output,
    require_triton,
    tl,
    triton_helper,
    triton_kernel,
)
from .tiles import FP8_VARIANT, FP8_VARIANT_WITHOUT_TMA, Fp8Variant, gpu_tiles

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:       # no triton (the launchers refuse first), or one without host TMA descriptors
    TensorDescriptor = None

E4M3_MAX = 448.0                       # largest finite float8_e4m3fn
P_SHIFT = math.log2(E4M3_MAX)          # probabilities are exp2(logit - row max + P_SHIFT) <= 448
SCALE_FLOOR = 1e-30                    # amax floor: an all-zero block gets a finite scale (and zeros)
FP8_HEAD_DIMS = tuple(range(16, 129, 16))   # head sizes taken (padded, below, to a reduction depth of 32+)
MIN_CAPABILITY = (8, 9)                # e4m3 tensor cores: Ada (8.9) and Hopper (9.0) onwards

_KERNEL_P_SHIFT = _kernel_constant(P_SHIFT)             # the same three, as kernel bodies read them
_KERNEL_E4M3_MAX = _kernel_constant(E4M3_MAX)
_KERNEL_SCALE_FLOOR = _kernel_constant(SCALE_FLOOR)


def fp8_unsupported_reason(device: torch.device | str) -> str | None:
    """Why `fp8_attention` cannot run compiled on `device` (None when it can): no CUDA device, no
    triton, or a GPU below compute capability 8.9 (FP8 tensor cores: Ada, Hopper and newer)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 attention needs a CUDA GPU, and the device is {device}"
    if not torch.cuda.is_available():
        return f"FP8 attention needs a CUDA GPU, and this machine has none usable ({device} asked for)"
    if not TRITON_AVAILABLE:
        return "FP8 attention is a Triton kernel, and triton is not installed (pip install triton)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"FP8 attention needs FP8 tensor cores (compute capability >= 8.9: Ada, Hopper or newer); "
                f"{device} is a {name} (compute capability {major}.{minor})")
    return None


def padded_head_dim(head_dim: int) -> int:
    """The head size the quantised tensors are stored at: head_dim rounded up to a power of two, at least 32
    (Triton's block shapes are powers of two; FP8 tensor-core products reduce over 32 or more). The
    padding channels are zeros: they add nothing to q . k and give output channels that are not stored."""
    return max(32, 1 << (head_dim - 1).bit_length())


def fp8_blocks(head_dim: int, tiles: LaunchConfig | None = None) -> LaunchConfig:
    """The launch tiles of one call (they also set the quantisation blocks): `tiles`, else
    tiles.py's for `head_dim` padded (the interpreter's small ones when interpreting)."""
    return tiles if tiles is not None else launch_config(gpu_tiles("fp8_attention", padded_head_dim(head_dim)))


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, what: str) -> None:
    check_qkv(q, k, v, what=what)
    if q.shape[-1] not in FP8_HEAD_DIMS:
        raise ValueError(f"{what}: head_dim must be a multiple of 16 from 16 to 128 (FP8_HEAD_DIMS), got {q.shape[-1]}")


# ----------------------------------------------------------------------------------------------
# Triton kernels


@triton_helper
def round_to_e4m3(x):
    """float32 x rounded to the nearest float8_e4m3fn value (ties to even, saturating at +-448), as float32."""
    a = tl.minimum(tl.abs(x), 448.0)
    bits = a.to(tl.int32, bitcast=True)
    # normal range: drop 20 of float32's 23 mantissa bits, round half to even (-1048576 = 0xFFF00000)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    # subnormals (below 2^-6): multiples of 2^-9; float32 numbers in [2^14, 2^15) are spaced 2^-9
    subnormal = (a + 16384.0) - 16384.0
    r = tl.where(a < 0.015625, subnormal, normal)
    # x's sign bit put back by bit operations: compiled, `-r` of r = +0.0 is 0 - r = +0.0, so a negative
    # value that rounds to zero would lose its sign (-0.0 in torch's cast)
    sign = (x.to(tl.int32, bitcast=True) >> 31) << 31
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton_helper
def to_e4m3(x, ROUND_IN_SOFTWARE: tl.constexpr):
    """float32 x (|x| <= 448 up to rounding) as float8e4nv, rounded to nearest even."""
    if ROUND_IN_SOFTWARE:
        x = round_to_e4m3(x)
    return x.to(tl.float8e4nv)


@triton_helper
def exp2_in_half(x, INTERPRETED: tl.constexpr):
    """2^x for float32 x <= 9 computed in float16, returned as float32: argument and result rounded to float16.

    Compiled: one `ex2.approx.f16x2` for two elements (the special-function unit gives two float16 results
    per issue, one float32), behind one `cvt.rn.f16x2.f32`. Interpreted: the same roundings around torch's
    exact exp2 (the interpreter runs no inline assembly)."""
    if INTERPRETED:
        return tl.exp2(x.to(tl.float16).to(tl.float32)).to(tl.float16).to(tl.float32)
    else:
        pair = tl.inline_asm_elementwise(
            "{ .reg .b32 h; cvt.rn.f16x2.f32 h, $2, $1; ex2.approx.f16x2 $0, h; }",
            "=r,r,r", [x], dtype=tl.float16, is_pure=True, pack=2)
        return pair.to(tl.float32)


@triton_kernel
def _quantise_blocks_kernel(
    X, Mean, Out, Scale,
    stride_xb, stride_xl, stride_xh,
    num_heads, seq_len, padded_len, num_blocks, head_dim,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, SUBTRACT_MEAN: tl.constexpr,
):
    # One program: BLOCK tokens of one (batch, head) of X [B, L, H, head_dim] -> Out [B*H, padded_len, HEAD_DIM]
    # e4m3 (zeros past seq_len and head_dim) and Scale [B*H, num_blocks] float32; Mean [B*H, HEAD_DIM].
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = rows < seq_len
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    x = tl.load(x_base + rows[:, None] * stride_xl + offs_d[None, :],
                mask=valid[:, None] & (offs_d < head_dim)[None, :], other=0.0).to(tl.float32)
    if SUBTRACT_MEAN:
        mean = tl.load(Mean + pid_bh * HEAD_DIM + offs_d)
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), _KERNEL_SCALE_FLOOR)
    # IEEE-rounded divisions (compiled `/` is approximate) and rounding in float32 arithmetic (exact on every
    # backend), so values and scales equal the torch reference's bit for bit
    x8 = to_e4m3(x * tl.div_rn(_KERNEL_E4M3_MAX, amax), True)
    out_base = Out + pid_bh.to(tl.int64) * padded_len * HEAD_DIM
    tl.store(out_base + rows[:, None] * HEAD_DIM + offs_d[None, :], x8)
    tl.store(Scale + pid_bh * num_blocks + pid, tl.div_rn(amax, _KERNEL_E4M3_MAX))


@triton_kernel
def _quantise_channels_transposed_kernel(
    X, Amax, Out,
    stride_xb, stride_xl, stride_xh,
    num_heads, seq_len, padded_len, head_dim,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    # One program: BLOCK tokens of one (batch, head) of X [B, L, H, head_dim], each channel scaled by its
    # Amax [B*H, HEAD_DIM] (floored) / 448, written transposed to Out [B*H, HEAD_DIM, padded_len] e4m3
    # (zeros past seq_len and head_dim).
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    x = tl.load(x_base + rows[:, None] * stride_xl + offs_d[None, :],
                mask=(rows < seq_len)[:, None] & (offs_d < head_dim)[None, :], other=0.0).to(tl.float32)
    amax = tl.maximum(tl.load(Amax + pid_bh * HEAD_DIM + offs_d), _KERNEL_SCALE_FLOOR)
    x8 = to_e4m3(x * tl.div_rn(_KERNEL_E4M3_MAX + tl.zeros_like(amax), amax)[None, :], True)
    out_base = Out + pid_bh.to(tl.int64) * padded_len * HEAD_DIM
    tl.store(out_base + offs_d[None, :] * padded_len + rows[:, None], x8)


@triton_helper
def _fp8_key_block(q8, k8t, vt8, k_scale, cols, kv_len, q_coef, m_i, l_i, acc,
                   MASKED: tl.constexpr, BLOCK_PV: tl.constexpr, HALF_EXP: tl.constexpr,
                   ROUND_IN_SOFTWARE: tl.constexpr):
    """Fold one key block (K^T k8t and V^T vt8, [D, BLOCK_N] e4m3, key positions `cols`) into
    (m_i, l_i, acc); base-2 logits; keys >= kv_len masked when MASKED. BLOCK_PV: the block's P V
    goes into a fresh accumulator, added to acc in float32 (else the tensor core accumulates into acc).
    HALF_EXP: the probabilities' exp2 in float16 pairs (exp2_in_half), else in float32."""
    coef = q_coef * k_scale
    s = tl.dot(q8, k8t)                                                                 # float32 [BLOCK_M, BLOCK_N]
    if MASKED:
        s = tl.where((cols < kv_len)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * coef)      # coef > 0: the max commutes with the scaling
    if HALF_EXP:
        p = exp2_in_half(s * coef - (m_new - _KERNEL_P_SHIFT)[:, None], ROUND_IN_SOFTWARE)   # <= 448
    else:
        p = tl.exp2(s * coef - (m_new - _KERNEL_P_SHIFT)[:, None])                      # <= 448
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    p8 = to_e4m3(p, ROUND_IN_SOFTWARE)
    if BLOCK_PV:
        acc = acc * alpha[:, None] + tl.dot(p8, tl.trans(vt8))
    else:
        acc = tl.dot(p8, tl.trans(vt8), acc * alpha[:, None])
    return m_new, l_i, acc


@triton_helper
def _fp8_load_kv(K8, Vt8, k_scales, pid_bh, start_n, offs_n, offs_d, k_padded,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr):
    """Key block [start_n, start_n + BLOCK_N) of (batch, head) pid_bh: K^T and V^T, [D, BLOCK_N] e4m3
    (through the tensor descriptors K8, Vt8 when TMA, else by pointer loads), and its K scale."""
    if TMA:
        k8t = tl.trans(K8.load([pid_bh * k_padded + start_n, 0]))
        vt8 = Vt8.load([pid_bh * HEAD_DIM, start_n])
    else:
        cols = start_n + offs_n
        k8t = tl.load(K8 + pid_bh.to(tl.int64) * k_padded * HEAD_DIM + cols[None, :] * HEAD_DIM + offs_d[:, None])
        vt8 = tl.load(Vt8 + pid_bh.to(tl.int64) * HEAD_DIM * k_padded + offs_d[:, None] * k_padded + cols[None, :])
    return k8t, vt8, tl.load(k_scales + start_n // BLOCK_N)


@triton_helper
def _fp8_full_block(q8, K8, Vt8, k_scales, pid_bh, start_n, offs_n, offs_d, k_padded, kv_len, q_coef, m_i, l_i, acc,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, BLOCK_PV: tl.constexpr,
                    HALF_EXP: tl.constexpr, ROUND_IN_SOFTWARE: tl.constexpr):
    """One unmasked key block of the main loop: load, then fold into (m_i, l_i, acc)."""
    k8t, vt8, k_scale = _fp8_load_kv(K8, Vt8, k_scales, pid_bh, start_n, offs_n, offs_d, k_padded,
                                     HEAD_DIM, BLOCK_N, TMA)
    return _fp8_key_block(q8, k8t, vt8, k_scale, start_n + offs_n, kv_len, q_coef, m_i, l_i, acc,
                          False, BLOCK_PV, HALF_EXP, ROUND_IN_SOFTWARE)


@triton_kernel
def _fp8_attention_kernel(
    Q8, K8, Vt8, QScale, KScale, VScale, Out,
    stride_ob, stride_ol, stride_oh,
    num_heads, q_len, kv_len, q_padded, k_padded, num_q_blocks, num_k_blocks, head_dim,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, BLOCK_PV: tl.constexpr, HALF_EXP: tl.constexpr, ROUND_IN_SOFTWARE: tl.constexpr,
):
    # One program: BLOCK_M queries of one (batch, head). Q8 [B*H, q_padded, D], K8 [B*H, k_padded, D],
    # Vt8 [B*H, D, k_padded] e4m3 (pointers, or with TMA descriptors of their 2-d views [B*H*q_padded, D],
    # [B*H*k_padded, D], [B*H*D, k_padded] with blocks [BLOCK_M, D], [BLOCK_N, D], [D, BLOCK_N]);
    # QScale [B*H, num_q_blocks], KScale [B*H, num_k_blocks], VScale [B*H, D] float32; Out [B, q_len, H, head_dim].
    # D = HEAD_DIM is the padded head size (padded_head_dim); channels from head_dim on are zeros, not stored.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if TMA:
        q8 = Q8.load([pid_bh * q_padded + pid_m * BLOCK_M, 0])
    else:
        q8 = tl.load(Q8 + pid_bh.to(tl.int64) * q_padded * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    q_coef = tl.load(QScale + pid_bh * num_q_blocks + pid_m) * qk_scale
    k_scales = KScale + pid_bh * num_k_blocks

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full_key_end = kv_len // BLOCK_N * BLOCK_N
    if WARP_SPECIALIZE:           # (the keyword only here: the plain loop compiles on any Triton)
        for start_n in tl.range(0, full_key_end, BLOCK_N, warp_specialize=True):
            m_i, l_i, acc = _fp8_full_block(q8, K8, Vt8, k_scales, pid_bh, start_n, offs_n, offs_d, k_padded, kv_len,
                                            q_coef, m_i, l_i, acc, HEAD_DIM, BLOCK_N, TMA, BLOCK_PV, HALF_EXP,
                                            ROUND_IN_SOFTWARE)
    else:
        for start_n in range(0, full_key_end, BLOCK_N):
            m_i, l_i, acc = _fp8_full_block(q8, K8, Vt8, k_scales, pid_bh, start_n, offs_n, offs_d, k_padded, kv_len,
                                            q_coef, m_i, l_i, acc, HEAD_DIM, BLOCK_N, TMA, BLOCK_PV, HALF_EXP,
                                            ROUND_IN_SOFTWARE)
    if full_key_end < kv_len:      # the partial tail block: keys past kv_len are padding
        k8t, vt8, k_scale = _fp8_load_kv(K8, Vt8, k_scales, pid_bh, full_key_end, offs_n, offs_d, k_padded,
                                         HEAD_DIM, BLOCK_N, TMA)
        m_i, l_i, acc = _fp8_key_block(q8, k8t, vt8, k_scale, full_key_end + offs_n, kv_len, q_coef, m_i, l_i, acc,
                                       True, BLOCK_PV, HALF_EXP, ROUND_IN_SOFTWARE)

    v_scale = tl.load(VScale + pid_bh * HEAD_DIM + offs_d)
    out = acc * v_scale[None, :] / l_i[:, None]
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ol + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=(offs_m < q_len)[:, None] & (offs_d < head_dim)[None, :])


# ----------------------------------------------------------------------------------------------
# Launchers


def _padded(length: int, block: int) -> int:
    return -(-length // block) * block


def e4m3_multiplier(amax: torch.Tensor) -> torch.Tensor:
    """448 / amax, correctly rounded as the kernels' tl.div_rn (torch's `448 / t` is reciprocal(t) * 448:
    two roundings)."""
    return torch.full_like(amax, E4M3_MAX) / amax


def e4m3_scale(amax: torch.Tensor) -> torch.Tensor:
    """amax / 448, correctly rounded as the kernels' tl.div_rn (CUDA divides by a Python scalar as a
    multiplication by its rounded reciprocal; 1/448 is not exact)."""
    return amax / torch.full_like(amax, E4M3_MAX)


def _pad_channels(per_channel: torch.Tensor) -> torch.Tensor:
    """[B*H, D] -> [B*H, padded_head_dim(D)], zeros in the padding channels."""
    return F.pad(per_channel, (0, padded_head_dim(per_channel.shape[-1]) - per_channel.shape[-1]))


def channel_amax(x: torch.Tensor) -> torch.Tensor:
    """max over tokens of |x| per (batch, head, channel): x [B, L, H, D] -> [B*H, Dp] float32 (no copy of x;
    Dp = padded_head_dim(D), zeros in the padding channels)."""
    low, high = torch.aminmax(x, dim=1)                                 # [B, H, D] each, exact
    return _pad_channels(torch.maximum(-low, high).float().reshape(-1, x.shape[-1]))


def token_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over tokens per (batch, head, channel), accumulated in float32: x [B, L, H, D] -> [B*H, Dp] float32
    (Dp = padded_head_dim(D), zeros in the padding channels)."""
    return _pad_channels(torch.mean(x, dim=1, dtype=torch.float32).reshape(-1, x.shape[-1]))


def quantise_blocks(x: torch.Tensor, block: int, mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) in e4m3 with one scale per block of `block` tokens per (batch, head).

    x: [B, L, H, D] (fp32/fp16/bf16); mean: [B*H, Dp] float32 (token_mean) or None. Returns x8 [B*H, Lp, Dp]
    float8_e4m3fn (Lp = L rounded up to whole blocks, Dp = padded_head_dim(D), zeros past L and D) and
    scale [B*H, Lp / block] float32 (x - mean ~= x8 * scale)."""
    require_triton(x, x.dtype, what="quantise_blocks")
    batch, seq_len, heads, head_dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    padded = _padded(seq_len, block)
    out = new_output((batch * heads, padded, padded_head_dim(head_dim)), torch.float8_e4m3fn, x.device)
    scale = new_output((batch * heads, padded // block), torch.float32, x.device)
    grid = (padded // block, batch * heads)
    _quantise_blocks_kernel[grid](
        x, mean if mean is not None else scale, out, scale,
        x.stride(0), x.stride(1), x.stride(2),
        heads, seq_len, padded, padded // block, head_dim,
        BLOCK=block, HEAD_DIM=out.shape[-1], SUBTRACT_MEAN=mean is not None, num_warps=4,
    )
    return out, scale


def quantise_channels_transposed(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x in e4m3 with one scale per (batch, head, channel), stored transposed.

    x: [B, L, H, D]. Returns xt8 [B*H, Dp, Lp] float8_e4m3fn (Lp = L rounded up to a multiple of
    `block`, Dp = padded_head_dim(D), zeros past L and D) and scale [B*H, Dp] float32
    (x[b, l, h, d] ~= xt8[b*H + h, d, l] * scale[b*H + h, d])."""
    require_triton(x, x.dtype, what="quantise_channels_transposed")
    batch, seq_len, heads, head_dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    padded = _padded(seq_len, block)
    amax = channel_amax(x)
    out = new_output((batch * heads, amax.shape[-1], padded), torch.float8_e4m3fn, x.device)
    grid = (padded // block, batch * heads)
    _quantise_channels_transposed_kernel[grid](
        x, amax, out,
        x.stride(0), x.stride(1), x.stride(2),
        heads, seq_len, padded, head_dim,
        BLOCK=block, HEAD_DIM=out.shape[1], num_warps=4,
    )
    return out, e4m3_scale(amax.clamp_min(SCALE_FLOOR))


def quantise_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles: LaunchConfig, *,
                 smooth_k: bool = True) -> tuple[torch.Tensor, ...]:
    """The Triton quantisation of fp8_attention's inputs: (q8, q_scale, k8, k_scale, vt8, v_scale), as
    quantise_blocks (q: BLOCK_M tokens; k: BLOCK_N tokens, smoothed by its token mean when `smooth_k`)
    and quantise_channels_transposed (v) return them."""
    q8, q_scale = quantise_blocks(q, tiles.block_m)
    k8, k_scale = quantise_blocks(k, tiles.block_n, token_mean(k) if smooth_k else None)
    vt8, v_scale = quantise_channels_transposed(v, tiles.block_n)
    return q8, q_scale, k8, k_scale, vt8, v_scale


def _tma_descriptors(q8: torch.Tensor, k8: torch.Tensor, vt8: torch.Tensor, tiles: LaunchConfig) -> tuple:
    """Host TMA descriptors of q8 [B*H, Lqp, Dp], k8 [B*H, Lkp, Dp], vt8 [B*H, Dp, Lkp] as 2-d views, with
    the kernel's blocks [BLOCK_M, D], [BLOCK_N, D], [D, BLOCK_N] (every block lies inside: lengths are padded)."""
    if TensorDescriptor is None:
        raise RuntimeError("fp8_attention: the TMA variant needs triton.tools.tensor_descriptor (Triton >= 3.3); "
                           "upgrade triton or use tiles.Fp8Variant(tma=False)")
    head_dim = q8.shape[-1]
    return (TensorDescriptor.from_tensor(q8.view(-1, head_dim), [tiles.block_m, head_dim]),
            TensorDescriptor.from_tensor(k8.view(-1, head_dim), [tiles.block_n, head_dim]),
            TensorDescriptor.from_tensor(vt8.view(-1, vt8.shape[-1]), [head_dim, tiles.block_n]))


@functools.lru_cache(maxsize=None)
def default_variant(device: torch.device) -> Fp8Variant:
    """tiles.FP8_VARIANT (TMA loads) on a GPU of compute capability 9.0+ whose Triton has host tensor
    descriptors; FP8_VARIANT_WITHOUT_TMA elsewhere (Ada, the interpreter)."""
    tma_capable = (device.type == "cuda" and not TRITON_INTERPRETED and TensorDescriptor is not None
                   and torch.cuda.get_device_capability(device) >= (9, 0))
    return FP8_VARIANT if tma_capable else FP8_VARIANT_WITHOUT_TMA


def fp8_attention_quantised(quantised: tuple[torch.Tensor, ...], q_shape: torch.Size, kv_len: int,
                            out_dtype: torch.dtype, tiles: LaunchConfig, variant: Fp8Variant | None = None
                            ) -> torch.Tensor:
    """The attention kernel alone, on quantise_qkv's output; q_shape = [B, Lq, H, D]. Returns [B, Lq, H, D].
    variant: tiles.py's Fp8Variant (default: default_variant(q8.device))."""
    q8, q_scale, k8, k_scale, vt8, v_scale = quantised
    variant = variant if variant is not None else default_variant(q8.device)
    batch, q_len, heads, head_dim = q_shape
    out = new_output((batch, q_len, heads, head_dim), out_dtype, q8.device)
    operands = _tma_descriptors(q8, k8, vt8, tiles) if variant.tma else (q8, k8, vt8)
    grid = (q8.shape[1] // tiles.block_m, batch * heads)
    _fp8_attention_kernel[grid](
        *operands, q_scale, k_scale, v_scale, out,
        out.stride(0), out.stride(1), out.stride(2),
        heads, q_len, kv_len, q8.shape[1], k8.shape[1], q_scale.shape[1], k_scale.shape[1], head_dim,
        LOG2E / math.sqrt(head_dim),
        HEAD_DIM=q8.shape[-1], BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, TMA=variant.tma,
        WARP_SPECIALIZE=variant.warp_specialize, BLOCK_PV=variant.block_pv, HALF_EXP=variant.half_exp,
        ROUND_IN_SOFTWARE=TRITON_INTERPRETED,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return out


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, smooth_k: bool = True,
                  tiles: LaunchConfig | None = None, variant: Fp8Variant | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v with e4m3 Q, K, V and P on the tensor cores, float32 accumulation.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; one dtype (bf16 on the GPU; fp16/fp32 in the
            interpreter), D in FP8_HEAD_DIMS (stored padded to padded_head_dim(D)), any lengths.
        smooth_k: subtract k's mean over tokens before quantising it (softmax-invariant).
        tiles: launch tiles (BLOCK_M, BLOCK_N also the quantisation blocks) instead of tiles.py's.
        variant: the kernel's loop variant (tiles.Fp8Variant: TMA loads, warp specialisation, per-block
            P V, float16 exp2) instead of default_variant(q.device).
    Returns:
        [B, Lq, H, D] in q's dtype. No host sync: CUDA graphs capture it.
    """
    what = "fp8_attention"
    _check_inputs(q, k, v, what=what)
    require_triton(q, q.dtype, what=what)
    if q.is_cuda and not TRITON_INTERPRETED:
        reason = fp8_unsupported_reason(q.device)
        if reason is not None:
            raise RuntimeError(f"{what}: {reason}; use the bf16 attention (--attention bf16)")
    config = fp8_blocks(q.shape[-1], tiles)
    quantised = quantise_qkv(q, k, v, config, smooth_k=smooth_k)
    return fp8_attention_quantised(quantised, q.shape, k.shape[1], q.dtype, config, variant)


# ----------------------------------------------------------------------------------------------
# PyTorch references


def _pad_head_dim(x: torch.Tensor) -> torch.Tensor:
    """[B, L, H, D] -> [B, L, H, padded_head_dim(D)] float32, zeros in the padding channels."""
    return F.pad(x.float(), (0, padded_head_dim(x.shape[-1]) - x.shape[-1]))


def quantise_blocks_reference(x: torch.Tensor, block: int, mean: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """quantise_blocks in torch ops (same contract, same float32 operations)."""
    x = _pad_head_dim(x)
    batch, seq_len, heads, head_dim = x.shape
    padded = _padded(seq_len, block)
    xf = x.transpose(1, 2).reshape(batch * heads, seq_len, head_dim)
    if mean is not None:
        xf = xf - mean[:, None, :]
    xf = F.pad(xf, (0, 0, 0, padded - seq_len)).view(batch * heads, padded // block, block, head_dim)
    amax = xf.abs().amax(dim=(2, 3)).clamp_min(SCALE_FLOOR)                         # [B*H, blocks]
    x8 = (xf * e4m3_multiplier(amax)[:, :, None, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return x8.view(batch * heads, padded, head_dim), e4m3_scale(amax)


def quantise_channels_transposed_reference(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quantise_channels_transposed in torch ops (same contract, same float32 operations)."""
    x = _pad_head_dim(x)
    batch, seq_len, heads, head_dim = x.shape
    padded = _padded(seq_len, block)
    amax = channel_amax(x).clamp_min(SCALE_FLOOR)                                   # [B*H, Dp]
    xt = x.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, seq_len)
    xt8 = (xt * e4m3_multiplier(amax)[:, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return F.pad(xt8.view(torch.uint8), (0, padded - seq_len)).view(torch.float8_e4m3fn), e4m3_scale(amax)


def quantise_qkv_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tiles: LaunchConfig, *,
                           smooth_k: bool = True) -> tuple[torch.Tensor, ...]:
    """quantise_qkv in torch ops."""
    q8, q_scale = quantise_blocks_reference(q, tiles.block_m)
    k8, k_scale = quantise_blocks_reference(k, tiles.block_n, token_mean(k) if smooth_k else None)
    vt8, v_scale = quantise_channels_transposed_reference(v, tiles.block_n)
    return q8, q_scale, k8, k_scale, vt8, v_scale


def fp8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, smooth_k: bool = True,
                            tiles: LaunchConfig | None = None) -> torch.Tensor:
    """fp8_attention in torch (same contract): the same quantisation (torch's float8_e4m3fn), then the
    kernel's blockwise online softmax in float32, P rounded to e4m3 relative to the running row max."""
    what = "fp8_attention_reference"
    _check_inputs(q, k, v, what=what)
    config = fp8_blocks(q.shape[-1], tiles)
    block_m, block_n = config.block_m, config.block_n
    batch, q_len, heads, head_dim = q.shape
    kv_len = k.shape[1]
    q8, q_scale, k8, k_scale, vt8, v_scale = quantise_qkv_reference(q, k, v, config, smooth_k=smooth_k)
    qf, kf, vf = q8.float(), k8.float(), vt8.float().transpose(1, 2)                 # [B*H, L(p), Dp]
    q_coef = q_scale.repeat_interleave(block_m, dim=1) * (LOG2E / math.sqrt(head_dim))   # [B*H, Lqp]
    m_i = torch.full(qf.shape[:2], float("-inf"), device=q.device)
    l_i = torch.zeros(qf.shape[:2], device=q.device)
    acc = torch.zeros(qf.shape, device=q.device)
    for block, start in enumerate(range(0, kv_len, block_n)):
        cols = slice(start, start + block_n)
        coef = q_coef * k_scale[:, block, None]
        s = qf @ kf[:, cols].transpose(1, 2)                                         # [B*H, Lqp, BLOCK_N]
        s = s.masked_fill(torch.arange(start, start + block_n, device=q.device) >= kv_len, float("-inf"))
        m_new = torch.maximum(m_i, s.amax(dim=2) * coef)
        p = torch.exp2(s * coef[:, :, None] - (m_new - P_SHIFT)[:, :, None])
        alpha = torch.exp2(m_i - m_new)
        l_i = l_i * alpha + p.sum(dim=2)
        p8 = p.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
        acc = acc * alpha[:, :, None] + p8 @ vf[:, cols]
        m_i = m_new
    out = acc * v_scale[:, None, :] / l_i[:, :, None]
    out = out[:, :q_len, :head_dim].reshape(batch, heads, q_len, head_dim)
    return out.transpose(1, 2).to(q.dtype)


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in float32, no quantisation: [B, L, H, D] in -> [B, Lq, H, D] float32."""
    out = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2),
                                         v.float().transpose(1, 2))
    return out.transpose(1, 2)
