"""FlowUniPCScheduler against diffusers' UniPCMultistepScheduler configured as for Wan2.1."""
import math

import pytest
import torch

from numina_engine.engine.scheduler import FlowUniPCScheduler, predictor_orders
from full_stack import full_stack

RTOL = 1e-6


def wan_reference_scheduler(num_steps: int, shift: float):
    """diffusers' UniPC with the scheduler_config.json the Wan2.1 diffusers checkpoints ship."""
    diffusers = full_stack("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        solver_order=2, prediction_type="flow_prediction", thresholding=False, predict_x0=True,
        solver_type="bh2", lower_order_final=True, disable_corrector=[], use_flow_sigmas=True,
        flow_shift=shift, timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero")
    scheduler.set_timesteps(num_steps)
    return scheduler


class LinearFlowModel:
    """A fixed random affine map standing in for the DiT: flow = x @ W + b (float32), so it depends on x."""

    def __init__(self, numel: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(numel, numel, generator=generator) / math.sqrt(numel)
        self.bias = torch.randn(numel, generator=generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().reshape(-1) @ self.weight + self.bias).reshape(x.shape).to(x.dtype)


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert error <= RTOL * scale, f"{what}: max error {error:.3e} > {RTOL:g} x max |expected| {scale:.3e}"


@pytest.mark.parametrize("num_steps,shift,shape", [
    (50, 5.0, (2, 3, 5, 7)),
    (7, 3.0, (16, 3, 6, 5)),
    (1, 5.0, (3, 11)),
    (2, 5.0, (4, 3, 3)),
    (3, 1.0, (2, 9)),
    (13, 8.0, (3, 2, 2, 7, 1)),
])
def test_trajectory_matches_diffusers(num_steps, shift, shape):
    reference = wan_reference_scheduler(num_steps, shift)
    ours = FlowUniPCScheduler(num_steps, shift=shift)
    assert ours.timesteps.dtype == torch.float32 and ours.timesteps.shape == (num_steps,)
    assert torch.equal(ours.timesteps, reference.timesteps.float())
    assert torch.equal(ours.sigmas, reference.sigmas)

    numel = math.prod(shape)
    model = LinearFlowModel(numel, seed=num_steps)
    x_ours = torch.randn(shape, generator=torch.Generator().manual_seed(100 + num_steps))
    x_ref = x_ours.clone()
    for index in range(num_steps):
        x_ours = ours.step(model(x_ours), x_ours, index)
        x_ref = reference.step(model(x_ref), reference.timesteps[index], x_ref, return_dict=False)[0]
        assert x_ours.shape == shape and x_ours.dtype == torch.float32
        assert_close_relative(x_ours, x_ref, f"sample after step {index}")


@pytest.mark.parametrize("shape", [(37,), (2, 1, 3, 5, 4)])
def test_any_shape_matches_flat_diffusers_run(shape):
    """diffusers needs >= 2 dims; the math is elementwise, so compare against its run on [1, numel]."""
    num_steps, shift = 6, 5.0
    reference = wan_reference_scheduler(num_steps, shift)
    ours = FlowUniPCScheduler(num_steps, shift=shift)
    numel = math.prod(shape)
    model = LinearFlowModel(numel, seed=7)
    x_ours = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    x_ref = x_ours.reshape(1, numel).clone()
    for index in range(num_steps):
        x_ours = ours.step(model(x_ours), x_ours, index)
        x_ref = reference.step(model(x_ref), reference.timesteps[index], x_ref, return_dict=False)[0]
        assert_close_relative(x_ours.reshape(1, numel), x_ref, f"sample after step {index}")


def test_timesteps_follow_wan_shift_formula():
    scheduler = FlowUniPCScheduler(10, shift=3.0)
    base = torch.linspace(1.0, 1e-3, 11, dtype=torch.float64)[:-1]
    shifted = 3.0 * base / (1 + 2.0 * base)
    shifted[0] -= 1e-6
    torch.testing.assert_close(scheduler.sigmas[:-1].double(), shifted, rtol=1e-7, atol=0)
    assert scheduler.sigmas[-1].item() == 0.0
    assert torch.equal(scheduler.timesteps, torch.floor(shifted * 1000).float())
    assert scheduler.timesteps[0].item() == 999.0
    assert bool((scheduler.timesteps[1:] < scheduler.timesteps[:-1]).all())


def test_orders_warm_up_and_lower_at_the_end():
    assert predictor_orders(1) == (1,)
    assert predictor_orders(2) == (1, 1)
    assert predictor_orders(5) == (1, 2, 2, 2, 1)


def test_low_precision_sample_uses_float32_math_and_keeps_dtype():
    """bf16 in: same trajectory as feeding the same values in float32, rounded back to bf16 per step."""
    num_steps, shape = 8, (3, 4, 5)
    model = LinearFlowModel(math.prod(shape), seed=3)
    low = FlowUniPCScheduler(num_steps, shift=5.0)
    full = FlowUniPCScheduler(num_steps, shift=5.0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4)).bfloat16()
    for index in range(num_steps):
        flow = model(x)
        x_next = low.step(flow, x, index)
        expected = full.step(flow.float(), x.float(), index).bfloat16()
        assert x_next.dtype == torch.bfloat16
        assert torch.equal(x_next, expected), f"step {index}"
        x = x_next


def test_step_zero_restarts_and_reset_frees_history():
    num_steps, shape = 5, (2, 6)
    model = LinearFlowModel(12, seed=5)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    scheduler = FlowUniPCScheduler(num_steps, shift=5.0)

    def run(first_steps: int) -> torch.Tensor:
        x = start
        for index in range(first_steps):
            x = scheduler.step(model(x), x, index)
        return x

    full = run(num_steps)
    run(3)                                   # abandoned partial trajectory
    assert torch.equal(run(num_steps), full)  # step 0 started over
    scheduler.reset()
    assert scheduler._x0_ring is None and scheduler._last_sample is None
    with pytest.raises(RuntimeError, match="in order"):
        scheduler.step(model(start), start, 1)
    assert torch.equal(run(num_steps), full)


def test_bad_calls_raise_clear_errors():
    scheduler = FlowUniPCScheduler(4)
    x = torch.randn(2, 3)
    with pytest.raises(IndexError, match="out of range"):
        scheduler.step(x, x, 4)
    with pytest.raises(TypeError, match="python int"):
        scheduler.step(x, x, torch.tensor(0))
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.randn(3, 2), x, 0)
    with pytest.raises(TypeError, match="floating point"):
        scheduler.step(x.long(), x.long(), 0)
    scheduler.step(x, x, 0)
    with pytest.raises(RuntimeError, match="in order"):
        scheduler.step(x, x, 2)
    with pytest.raises(ValueError, match="does not match the trajectory"):
        scheduler.step(torch.randn(2, 4), torch.randn(2, 4), 1)
    for bad in (dict(num_steps=0), dict(num_steps=2.0), dict(num_steps=3, shift=0.0),
                dict(num_steps=3, shift=float("nan")), dict(num_steps=3, num_train_timesteps=1)):
        with pytest.raises(ValueError):
            FlowUniPCScheduler(**bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype feature")
def test_cuda_steps_never_sync_with_host_and_match_cpu():
    num_steps, shape = 6, (4, 3, 8, 8)
    model = LinearFlowModel(math.prod(shape), seed=9)
    cpu = FlowUniPCScheduler(num_steps, shift=5.0)
    gpu = FlowUniPCScheduler(num_steps, shift=5.0, device="cuda")
    assert gpu.timesteps.is_cuda and gpu.sigmas.is_cuda
    x_cpu = torch.randn(shape, generator=torch.Generator().manual_seed(10))
    x_gpu = x_cpu.cuda()
    flows = []
    for index in range(num_steps):
        flow = model(x_cpu)
        x_cpu = cpu.step(flow, x_cpu, index)
        flows.append(flow.cuda())
    gpu.step(flows[0], x_gpu, 0)  # warm-up: allocates the history buffers; the loop's step 0 starts over
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(num_steps):
            x_gpu = gpu.step(flows[index], x_gpu, index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close_relative(x_gpu.cpu(), x_cpu, "final sample on CUDA vs CPU")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_steps_captured_in_cuda_graphs_replay_the_eager_trajectory():
    num_steps, shape = 8, (4, 3, 8, 8)
    generator = torch.Generator("cuda").manual_seed(11)
    weight = torch.randn(8, 8, device="cuda", generator=generator) / 3

    def model(x):
        return torch.tanh(x @ weight)

    def eager(x):
        scheduler = FlowUniPCScheduler(num_steps, shift=5.0, device="cuda")
        for index in range(num_steps):
            x = scheduler.step(model(x), x, index)
        return x

    captured = FlowUniPCScheduler(num_steps, shift=5.0, device="cuda")
    static_input = torch.randn(shape, device="cuda", generator=generator)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up run, allocates the history buffers
        warm = static_input
        for index in range(num_steps):
            warm = captured.step(model(warm), warm, index)
    torch.cuda.current_stream().wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    graphs, output = [], static_input
    for index in range(num_steps):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            output = captured.step(model(output), output, index)
        graphs.append(graph)
    for _ in range(2):
        start = torch.randn(shape, device="cuda", generator=generator)
        static_input.copy_(start)
        for graph in graphs:
            graph.replay()
        torch.testing.assert_close(output, eager(start), rtol=0, atol=0)


def wan_published_grid(num_steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan2.1's FlowUniPCMultistepScheduler grid, written from its published construction: the
    training sigmas 1 - linspace(1, 1/1000, 1000)[::-1] in float32 (shift 1 at construction), then
    set_timesteps: linspace(sigma_max, sigma_min, n + 1)[:-1], sigma' = k s / (1 + (k - 1) s),
    timesteps = int64(sigma' * 1000), sigmas = float32(sigma' + [0])."""
    import numpy as np

    train = torch.from_numpy(1.0 - np.linspace(1, 1 / 1000, 1000)[::-1].copy()).to(torch.float32)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, num_steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * 1000).to(torch.int64)
    return timesteps, torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


@pytest.mark.parametrize("num_steps", range(1, 51))
def test_wan_sigma_grid_matches_wan_published_formula(num_steps):
    scheduler = FlowUniPCScheduler(num_steps, shift=5.0, sigma_grid="wan")
    timesteps, sigmas = wan_published_grid(num_steps, 5.0)
    assert torch.equal(scheduler.timesteps, timesteps.to(torch.float32))
    assert torch.equal(scheduler.sigmas, sigmas)
    diffusers_grid = FlowUniPCScheduler(num_steps, shift=5.0)
    assert not torch.equal(diffusers_grid.sigmas[:-1], scheduler.sigmas[:-1])   # the two grids differ


def test_wan_sigma_grid_trajectory_runs_and_bad_grid_is_rejected():
    model = LinearFlowModel(12, seed=4)
    scheduler = FlowUniPCScheduler(10, shift=5.0, sigma_grid="wan")
    sample = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    for index in range(10):
        sample = scheduler.step(model(sample), sample, index)
    assert bool(torch.isfinite(sample).all())
    with pytest.raises(ValueError, match="sigma_grid"):
        FlowUniPCScheduler(10, sigma_grid="karras")
