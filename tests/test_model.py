"""WanDiT against diffusers' WanTransformer3DModel, its RoPE against Wan's float64 formula, bf16 vs
fp32, the attention-interface plumbing, the fused-kernel path (CUDA) against the PyTorch path,
and WanConfig's JSON forms."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from numina_engine.engine import attention
from numina_engine.engine.forward_state import ForwardState
from numina_engine.engine.config import PRESETS, WAN_1_3B, WAN_14B, WAN_TINY, WanConfig
from numina_engine.engine.model import WanDiT, build_rope_tables, feed_forward, rope_axis_dims
from numina_engine.engine.weights import diffusers_to_official
from numina_engine.errors import CheckpointError
from numina_engine.kernels import KernelChoice, apply_rope, fp8_attention_reference
from numina_engine.kernels._triton import TRITON_INTERPRETED

# Latent F=3, H=10, W=14 -> odd, non-square token grid 3 x 5 x 7.
LATENT_SHAPE = (2, 16, 3, 10, 14)
# head_dim 20 (RoPE split 8/6/6, not a multiple of 6) and no cross-attention LayerNorm.
ODD_CONFIG = WanConfig(dim=60, ffn_dim=96, num_heads=3, num_layers=2, text_dim=24, cross_attn_norm=False)
# No q/k RMSNorm either: the fused path then only rotates (self-attention) or copies (cross-attention).
NO_NORMS_CONFIG = WanConfig(dim=48, ffn_dim=80, num_heads=2, num_layers=2, text_dim=24, qk_norm=False,
                            cross_attn_norm=False)
FUSED_PATH_CONFIGS = pytest.mark.parametrize("config", [WAN_TINY, ODD_CONFIG, NO_NORMS_CONFIG],
                                             ids=["tiny", "odd_head_dim_no_norm3", "no_norms"])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_inputs(config: WanConfig, generator: torch.Generator):
    latents = torch.randn(LATENT_SHAPE, generator=generator)
    timestep = torch.rand(LATENT_SHAPE[0], generator=generator) * 1000
    context = torch.randn(LATENT_SHAPE[0], config.text_len, config.text_dim, generator=generator)
    return latents, timestep, context


def random_wandit(config: WanConfig, seed: int) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)     # norm weights != 1, biases != 0
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("config", [WAN_TINY, ODD_CONFIG], ids=["tiny", "odd_head_dim_no_norm3"])
def test_matches_diffusers_fp32(config):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    kwargs = {k: v for k, v in config.to_diffusers_json().items() if not k.startswith("_")}
    reference = diffusers.WanTransformer3DModel(**kwargs).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model = WanDiT(config).eval()
    model.load_state_dict(diffusers_to_official(reference.state_dict()), strict=True)

    latents, timestep, context = random_inputs(config, torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(latents, timestep, context, return_dict=False)[0]
        actual = model(latents, timestep, context)
    assert actual.shape == LATENT_SHAPE and actual.dtype == torch.float32
    # diffusers computes the timestep sinusoid in fp32, Wan (and WanDiT) in fp64: ~2e-6 apart.
    assert relative_error(actual, expected) < 1e-5


def wan_rope_float64(x: torch.Tensor, grid, head_dim: int) -> torch.Tensor:
    """Wan's formula: channel pairs as complex numbers times exp(i * pos * 10000^(-2j/axis_dim)), in float64."""
    half = head_dim // 2
    axis_pairs = [half - 2 * (half // 3), half // 3, half // 3]
    rotations = []
    for length, pairs in zip(grid, axis_pairs):
        inv_freq = 1.0 / torch.pow(10000.0, torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
        rotations.append(torch.polar(torch.ones_like(angles), angles))
    f, h, w = grid
    table = torch.cat([rotations[0].view(f, 1, 1, -1).expand(f, h, w, -1),
                       rotations[1].view(1, h, 1, -1).expand(f, h, w, -1),
                       rotations[2].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, half)
    x_complex = torch.view_as_complex(x.double().reshape(*x.shape[:-1], half, 2))
    return torch.view_as_real(x_complex * table).flatten(-2)


@pytest.mark.parametrize("grid, head_dim", [((3, 5, 7), 16), ((21, 30, 52), 128), ((2, 9, 4), 20)])
def test_rope_fp32_matches_float64_formula(grid, head_dim):
    """fp32 tables (angles rounded once from fp64) and fp32 rotation stay within ~1e-6 of Wan's fp64 RoPE,
    up to the 480p 81-frame grid 21 x 30 x 52 of the 1.3B/14B models."""
    generator = torch.Generator().manual_seed(3)
    length = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, length, 2, head_dim, generator=generator)
    cos, sin = build_rope_tables(grid, head_dim)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (length, head_dim // 2)
    actual = apply_rope(x, cos, sin)
    expected = wan_rope_float64(x, grid, head_dim)
    assert (actual.double() - expected).abs().max().item() < 2e-6 * x.abs().max().item()


def test_rope_axis_split_and_cache():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(16) == (8, 4, 4)
    model = WanDiT(WAN_TINY)
    first = model.rope_tables((3, 5, 7), torch.device("cpu"))
    assert model.rope_tables((3, 5, 7), torch.device("cpu")) is first
    assert model.rope_tables((3, 5, 6), torch.device("cpu"))[0].shape == (90, 8)


def test_bf16_close_to_fp32():
    """bf16 matmuls (8-bit mantissa, relative rounding 2^-9) over 3 blocks: outputs stay within 2% of fp32
    (measured ~0.4%). Modulation, norms and residual stream stay fp32."""
    model = random_wandit(WAN_TINY, seed=4)
    inputs = random_inputs(WAN_TINY, torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(*inputs)
        mixed = WanDiT(WAN_TINY).eval()
        mixed.load_state_dict(model.state_dict())
        mixed.cast_weights(torch.bfloat16)
        assert mixed.blocks[0].ffn[0].weight.dtype == torch.bfloat16
        assert mixed.blocks[0].modulation.dtype == torch.float32
        assert mixed.time_projection[1].weight.dtype == torch.float32
        actual_mixed = mixed(*inputs)
        actual_all_bf16 = model.to(torch.bfloat16)(*inputs)
    assert actual_mixed.dtype == actual_all_bf16.dtype == torch.float32
    assert relative_error(actual_mixed, expected) < 2e-2
    assert relative_error(actual_all_bf16, expected) < 2e-2


def test_attention_interface_receives_layer_index_and_state(monkeypatch):
    model = random_wandit(WAN_TINY, seed=6)
    inputs = random_inputs(WAN_TINY, torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(*inputs)
    calls = []
    state = ForwardState()          # empty: every call takes the plain path

    def recording(kind, original):
        def wrapper(q, k, v, *, layer_index, state, kernels):
            calls.append((kind, layer_index, state, kernels, tuple(q.shape), tuple(k.shape)))
            return original(q, k, v, layer_index=layer_index, state=state, kernels=kernels)
        return wrapper

    monkeypatch.setattr(attention, "self_attention", recording("self", attention.self_attention))
    monkeypatch.setattr(attention, "cross_attention", recording("cross", attention.cross_attention))
    with torch.no_grad():
        actual = model(*inputs, state=state)
    assert torch.equal(actual, expected)
    heads, head_dim = WAN_TINY.num_heads, WAN_TINY.head_dim
    assert calls == [call for i in range(WAN_TINY.num_layers) for call in (
        ("self", i, state, model.kernels, (2, 105, heads, head_dim), (2, 105, heads, head_dim)),
        ("cross", i, state, model.kernels, (2, 105, heads, head_dim), (2, WAN_TINY.text_len, heads, head_dim)))]


def test_fp8_setting_routes_the_plain_self_attention_calls_only(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 40, 2, 64, generator=gen) for _ in range(3))
    text_k, text_v = (torch.randn(2, 16, 2, 64, generator=gen) for _ in range(2))
    fp8 = KernelChoice("reference", attention="fp8")
    sdpa = attention._sdpa(q, k, v)
    out = attention.self_attention(q, k, v, layer_index=0, state=None, kernels=fp8)
    assert torch.equal(out, fp8_attention_reference(q, k, v)) and not torch.equal(out, sdpa)
    assert torch.equal(attention.self_attention(q, k, v, layer_index=0, state=None, kernels=KernelChoice("reference")),
                       sdpa)
    assert torch.equal(attention.cross_attention(q, text_k, text_v, layer_index=0, state=None, kernels=fp8),
                       attention._sdpa(q, text_k, text_v))
    # The extraction block's call stays exact (extraction.py), whichever attention is set.
    extracted = []
    monkeypatch.setattr(attention, "extract_self_attention",
                        lambda q, k, v, extraction, kernels, shard=None: extracted.append(extraction) or attention._sdpa(q, k, v))
    state = ForwardState(extraction=SimpleNamespace(layer=1))
    assert torch.equal(attention.self_attention(q, k, v, layer_index=1, state=state, kernels=fp8), sdpa)
    assert extracted == [state.extraction]
    assert torch.equal(attention.self_attention(q, k, v, layer_index=0, state=state, kernels=fp8), out)


@pytest.mark.skipif(not TRITON_INTERPRETED, reason="runs the Triton kernels on CPU tensors in the interpreter")
def test_fp8_forward_in_the_interpreter_matches_its_torch_path():
    """The FP8 kernel wired into a whole forward (head_dim 64; 15 tokens: one partial block)."""
    config = WanConfig(dim=128, ffn_dim=96, num_heads=2, num_layers=2, text_dim=24, text_len=16)
    model = random_wandit(config, seed=13)
    generator = torch.Generator().manual_seed(14)
    inputs = (torch.randn(2, 16, 1, 6, 10, generator=generator), torch.rand(2, generator=generator) * 1000,
              torch.randn(2, config.text_len, config.text_dim, generator=generator))
    with torch.no_grad():
        exact = model(*inputs)
        model.kernels = KernelChoice("reference", attention="fp8")
        torch_path = model(*inputs)
        model.kernels = KernelChoice("triton", attention="fp8")
        kernel_path = model(*inputs)
    assert relative_error(kernel_path, torch_path) < 1e-5
    assert 1e-4 < relative_error(torch_path, exact) < 5e-2      # quantised, and close


def test_unknown_kernel_choice_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"kernels must be one of \('auto', 'triton', 'reference'\)"):
        WanDiT(WAN_TINY, kernels="fast")
    assert WanDiT(WAN_TINY, kernels="reference").kernels == KernelChoice("reference")


@pytest.mark.skipif(not TRITON_INTERPRETED, reason="runs the Triton kernels on CPU tensors in the interpreter")
@FUSED_PATH_CONFIGS
def test_fused_path_in_the_interpreter_matches_torch_path_fp32(config):
    """The model's kernel wiring (shapes, strides, modulation views, in-place residual), checked on
    the CPU: with kernels="triton", the kernels run in Triton's interpreter."""
    # A 1 x 3 x 5 token grid and 16 text tokens: few interpreted programs (4 tokens each, some partial).
    config = dataclasses.replace(config, text_len=16)
    model = random_wandit(config, seed=9)
    generator = torch.Generator().manual_seed(10)
    inputs = (torch.randn(2, 16, 1, 6, 10, generator=generator), torch.rand(2, generator=generator) * 1000,
              torch.randn(2, config.text_len, config.text_dim, generator=generator))
    with torch.no_grad():
        expected = model(*inputs)                                  # "auto": the references on the CPU
        model.kernels = KernelChoice("triton")
        actual = model(*inputs)
    assert relative_error(actual, expected) < 1e-5


@pytest.fixture
def exact_float32_on_gpu(monkeypatch):
    """float32 matmuls and convolutions without TF32 (cuDNN's convolutions default to it)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@requires_cuda
@FUSED_PATH_CONFIGS
def test_cuda_fused_path_matches_cpu_fp32(config, exact_float32_on_gpu):
    model = random_wandit(config, seed=11)
    inputs = random_inputs(config, torch.Generator().manual_seed(12))
    with torch.no_grad():
        expected = model(*inputs)
        expected_b1 = model(*(t[:1] for t in inputs))
        model.cuda()
        actual = model(*(t.cuda() for t in inputs)).cpu()
        actual_b1 = model(*(t[:1].cuda() for t in inputs)).cpu()
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(actual_b1, expected_b1) < 1e-5


@requires_cuda
def test_cuda_fused_path_bf16_as_close_to_fp32_as_torch_path(exact_float32_on_gpu):
    model = random_wandit(WAN_TINY, seed=13).cuda()
    inputs = [t.cuda() for t in random_inputs(WAN_TINY, torch.Generator().manual_seed(14))]
    with torch.no_grad():
        expected = model(*inputs)
        model.cast_weights(torch.bfloat16)
        fused = model(*inputs)                                     # "auto": the kernels on CUDA
        model.kernels = KernelChoice("reference")
        unfused = model(*inputs)
    assert relative_error(fused, unfused) < 1e-2
    assert relative_error(fused, expected) <= 1.25 * relative_error(unfused, expected) + 1e-3


@requires_cuda
def test_gelu_epilogue_is_gelu_tanh_within_bf16_rounding(exact_float32_on_gpu):
    """feed_forward's cuBLASLt GELU epilogue (bf16, Wan2.1-1.3B's FFN widths) against the float32
    GELU(tanh) of the same bf16 inputs: no further from it than nn.Linear + nn.GELU("tanh") in bf16."""
    gen = torch.Generator(device="cpu").manual_seed(15)
    first, second = nn.Linear(1536, 8960), nn.Linear(8960, 1536)
    ffn = nn.Sequential(first, nn.GELU(approximate="tanh"), second).cuda().to(torch.bfloat16)
    x = (3 * torch.randn(2, 2000, 1536, generator=gen)).cuda().to(torch.bfloat16)   # pre-activations ~N(0, 1.7^2)
    with torch.no_grad():
        exact = F.gelu(F.linear(x.float(), first.weight.float(), first.bias.float()), approximate="tanh")
        fused = torch._addmm_activation(first.bias, x.flatten(0, 1), first.weight.t(), use_gelu=True).view_as(exact)
        unfused = ffn[1](first(x))
        assert relative_error(fused, exact) <= 1.25 * relative_error(unfused, exact)
        assert (fused.float() - exact).abs().max() <= 2 * (unfused.float() - exact).abs().max()
        exact_out = F.linear(exact, second.weight.float(), second.bias.float())
        assert relative_error(feed_forward(ffn, x), exact_out) <= 1.25 * relative_error(ffn(x), exact_out)


@requires_cuda
def test_forward_replays_in_a_cuda_graph():
    """No host syncs or per-call host tensors in the fused bf16 forward: it captures, and the replay
    reads new inputs written into the captured ones."""
    model = random_wandit(WAN_TINY, seed=16).cuda().cast_weights(torch.bfloat16)
    static = [t.cuda() for t in random_inputs(WAN_TINY, torch.Generator().manual_seed(17))]
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = model(*static)              # compiles the kernels and caches the RoPE tables
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(*static)
        for tensor, fresh in zip(static, random_inputs(WAN_TINY, torch.Generator().manual_seed(18))):
            tensor.copy_(fresh)
        graph.replay()
        expected = model(*static)
    assert torch.equal(captured, expected)              # the same kernels on the same inputs
    assert relative_error(first, expected) > 0.1


def test_token_grid_and_input_errors():
    model = WanDiT(WAN_TINY)
    assert model.token_grid(LATENT_SHAPE) == (3, 5, 7)
    assert model.token_grid(LATENT_SHAPE[1:]) == (3, 5, 7)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model.token_grid((2, 16, 3, 11, 14))
    latents, timestep, context = random_inputs(WAN_TINY, torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match=r"latents must be \[B, 16, F, H, W\]"):
        model(latents[:, :8], timestep, context)
    with pytest.raises(ValueError, match="timestep must be"):
        model(latents, timestep[:1], context)
    with pytest.raises(ValueError, match="zero-padded to text_len"):
        model(latents, timestep, context[:, :77])


OFFICIAL_1_3B_JSON = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
                      "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
                      "num_layers": 30, "out_dim": 16, "text_len": 512}
DIFFUSERS_14B_JSON = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
                      "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06,
                      "ffn_dim": 13824, "freq_dim": 256, "image_dim": None, "in_channels": 16,
                      "num_attention_heads": 40, "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
                      "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096}


def test_config_json_forms():
    assert WanConfig.from_official_json(OFFICIAL_1_3B_JSON) == WAN_1_3B
    assert WanConfig.from_diffusers_json(DIFFUSERS_14B_JSON) == WAN_14B
    assert set(PRESETS) == {"1.3B", "14B", "tiny"} and WAN_14B.head_dim == 128
    for config in (*PRESETS.values(), ODD_CONFIG):
        assert WanConfig.from_official_json(config.to_official_json()) == config
        assert WanConfig.from_diffusers_json(config.to_diffusers_json()) == config


def test_config_errors():
    with pytest.raises(CheckpointError, match="model_type 'i2v'"):
        WanConfig.from_official_json({**OFFICIAL_1_3B_JSON, "model_type": "i2v"})
    with pytest.raises(CheckpointError, match=r"missing keys \['dim'\]"):
        WanConfig.from_official_json({k: v for k, v in OFFICIAL_1_3B_JSON.items() if k != "dim"})
    with pytest.raises(CheckpointError, match=r"unknown keys \['vace_layers'\]"):
        WanConfig.from_official_json({**OFFICIAL_1_3B_JSON, "vace_layers": [0, 2]})
    with pytest.raises(CheckpointError, match="image_dim=1280"):
        WanConfig.from_diffusers_json({**DIFFUSERS_14B_JSON, "image_dim": 1280})
    with pytest.raises(ValueError, match="divisible by num_heads"):
        WanConfig(dim=64, ffn_dim=128, num_heads=5, num_layers=1)
    with pytest.raises(ValueError, match="must be even and >= 6"):
        WanConfig(dim=36, ffn_dim=128, num_heads=4, num_layers=1)        # head_dim 9
    with pytest.raises(ValueError, match="must be even and >= 6"):
        WanConfig(dim=16, ffn_dim=128, num_heads=4, num_layers=1)        # head_dim 4
    with pytest.raises(ValueError, match="patch_size"):
        dataclasses.replace(WAN_TINY, patch_size=(1, 2))


def test_trainable_forward_equals_inference_and_backpropagates():
    """With autograd recording (training) the residual stream is updated out of place, so the backward
    pass works, and the forward value equals the in-place inference forward."""
    model = random_wandit(WAN_TINY, seed=5)
    latents, timestep, context = random_inputs(WAN_TINY, torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(latents, timestep, context)
    out = model(latents, timestep, context)
    assert torch.equal(out.detach(), expected)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0


def test_fp8_is_refused_for_head_sizes_the_kernel_lacks(monkeypatch):
    """On an FP8-capable device, a model whose heads the FP8 kernel does not take (not a multiple of 16, or
    above 128) is refused with what to do, instead of failing at the first self-attention; the demo model's
    48 is taken (padded to 64)."""
    from numina_engine.engine import attention
    from numina_engine.errors import UserInputError

    monkeypatch.setattr(attention, "fp8_unsupported_reason", lambda device: None)    # as on an H200
    for taken in (48, 64, 128):
        attention.check_attention_setting("fp8", torch.device("cpu"), head_dim=taken)
    for refused in (40, 256):
        with pytest.raises(UserInputError, match=f"steps of 16, this model's are {refused}.*--attention bf16"):
            attention.check_attention_setting("fp8", torch.device("cpu"), head_dim=refused)
