"""Wan2.1's default sampler: flow-matching UniPC multistep (predictor B(h)=bh2, order 2, corrector on).

Reproduces diffusers' `UniPCMultistepScheduler` configured as the Wan2.1 diffusers checkpoints ship it:
prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000,
solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[],
final_sigmas_type="zero", timestep_spacing="linspace", no thresholding.

Notation (flow matching): x_s = (1 - s) x0 + s noise, so alpha = 1 - sigma and the half log-SNR is
lambda = log(alpha) - log(sigma). The DiT predicts the flow v; the solver works on the x0 prediction
m_i = x_i - sigma_i v_i. With h the lambda increment of a step and E = expm1(-h):

    predictor i -> i+1:  x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} E m_i
                                   [- a_{i+1} E * 0.5 (m_{i-1} - m_i) / r]            (order 2)
    corrector at i:      x_i    <- (s_i/s_{i-1}) x_{i-1} - a_i E m_{i-1}
                                   - a_i E ([rho_old (m_{i-2} - m_{i-1}) / r] + rho_new (m_i - m_{i-1}))

where r is the previous lambda gap relative to h, x_{i-1} is the (corrected) sample the previous predictor
started from, and the bracketed terms only exist at order 2. Orders: warm-up from 1, capped at 2, and
lowered again to 1 on the last step (lower_order_final).

Sigma grids (`sigma_grid`): "diffusers" is the grid above (linspace(1, 1/1000) before the shift, first
sigma nudged by 1e-6); "wan" is Wan2.1's own FlowUniPCMultistepScheduler (wan/utils/fm_solvers_unipc.py,
the sampler of the authors' code): linspace(sigma_max, 0) before the shift, sigma_max the float32 0.999 of
its training table (1 - linspace(1, 1/1000, 1000) reversed), no nudge. The solver is the same on both.

Every scalar above depends only on the sigma schedule, so all of them are computed once on the host when
the scheduler is built (float32, in the same operation order as diffusers, so trajectories agree to float32
rounding). `step` is then pure elementwise arithmetic on the sample's device with 0-d coefficient tensors:
no value is ever read back to the host, so a step can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np
import torch

SOLVER_ORDER = 2
SIGMA_GRIDS = ("wan", "diffusers")
# diffusers nudges a first sigma of exactly 1 down by this much so that log(alpha) stays finite.
_FIRST_SIGMA_EPS = 1e-6


def shifted_flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    """float64 [num_steps]: linspace(1, 1/num_train_timesteps) with Wan's shift s' = k s / (1 + (k - 1) s).

    The first sigma (exactly 1 after shifting) is lowered by 1e-6 as diffusers does.
    """
    sigmas = np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if abs(sigmas[0] - 1.0) < _FIRST_SIGMA_EPS:
        sigmas[0] -= _FIRST_SIGMA_EPS
    return sigmas


def wan_flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int) -> np.ndarray:
    """float64 [num_steps]: Wan2.1's grid, linspace(sigma_max, 0) without its endpoint, then the shift.

    sigma_max is the first entry of Wan's float32 training sigmas 1 - linspace(1, 1/T, T)[::-1], i.e.
    float32(1 - 1/T) (0.999 for T = 1000, as float32 0.99900001...).
    """
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    sigmas = np.linspace(sigma_max, 0.0, num_steps + 1)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def predictor_orders(num_steps: int) -> tuple[int, ...]:
    """Order of the UniP predictor at each step: warm-up 1, then 2, and 1 again on the final step."""
    return tuple(min(SOLVER_ORDER, num_steps - index, index + 1) for index in range(num_steps))


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(1 - sigma) - log(sigma) for a float32 0-d flow sigma (+inf at sigma = 0)."""
    return torch.log(1 - sigma) - torch.log(sigma)


@dataclass(frozen=True)
class UniPCCoefficients:
    """Per-step scalars of the solver, each float32 [num_steps] (NaN where a step does not use it)."""

    sigma: torch.Tensor                # x0 prediction: m_i = x_i - sigma_i v_i
    predictor_sample: torch.Tensor     # s_{i+1} / s_i
    predictor_x0: torch.Tensor         # a_{i+1} expm1(-h); bh2's B(h) = expm1(-h), so it also weighs the slope
    predictor_ratio: torch.Tensor      # r = (lambda_{i-1} - lambda_i) / h           (order 2 only)
    corrector_sample: torch.Tensor     # s_i / s_{i-1}
    corrector_x0: torch.Tensor         # a_i expm1(-h), also the weight of the correction (bh2)
    corrector_ratio: torch.Tensor      # r = (lambda_{i-2} - lambda_{i-1}) / h       (order 2 only)
    corrector_rho_old: torch.Tensor    # weight of (m_{i-2} - m_{i-1}) / r            (order 2 only)
    corrector_rho_new: torch.Tensor    # weight of (m_i - m_{i-1})

    def to(self, device: torch.device) -> "UniPCCoefficients":
        return UniPCCoefficients(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def unipc_coefficients(sigmas: torch.Tensor, orders: tuple[int, ...]) -> UniPCCoefficients:
    """Build the solver's scalars on the host from float32 `sigmas` [num_steps + 1] (last one 0).

    `orders[i]` is the predictor order of step i; the corrector at step i uses order `orders[i - 1]`.
    """
    num_steps = len(orders)
    table = {f.name: torch.full((num_steps,), math.nan, dtype=torch.float32) for f in fields(UniPCCoefficients)}
    table["sigma"] = sigmas[:-1].clone()
    lambdas = [_half_log_snr(sigmas[index]) for index in range(num_steps + 1)]
    for index in range(num_steps):
        # Predictor from sigma_index to sigma_{index+1}.
        sigma_to, sigma_from = sigmas[index + 1], sigmas[index]
        alpha_to = 1 - sigma_to
        h = lambdas[index + 1] - lambdas[index]
        expm1_h = torch.expm1(-h)
        table["predictor_sample"][index] = sigma_to / sigma_from
        table["predictor_x0"][index] = alpha_to * expm1_h
        if orders[index] == 2:
            table["predictor_ratio"][index] = (lambdas[index - 1] - lambdas[index]) / h
        if index == 0:
            continue
        # Corrector of the sample the previous predictor produced (sigma_{index-1} -> sigma_index).
        order = orders[index - 1]
        sigma_to, sigma_from = sigmas[index], sigmas[index - 1]
        alpha_to = 1 - sigma_to
        h = lambdas[index] - lambdas[index - 1]
        hh = -h
        expm1_h = torch.expm1(hh)
        table["corrector_sample"][index] = sigma_to / sigma_from
        table["corrector_x0"][index] = alpha_to * expm1_h
        if order == 1:
            table["corrector_rho_new"][index] = 0.5
            continue
        ratio = (lambdas[index - 2] - lambdas[index - 1]) / h
        # Order conditions of UniC (B(h) form): solve [[1, 1], [r, 1]] rho = rhs.
        rhs = []
        h_phi = expm1_h / hh - 1
        factorial = 1
        for k in range(1, order + 1):
            rhs.append(h_phi * factorial / expm1_h)
            factorial *= k + 1
            h_phi = h_phi / hh - 1 / factorial
        ratios = torch.stack([ratio, torch.ones((), dtype=torch.float32)])
        system = torch.stack([torch.pow(ratios, k) for k in range(order)])
        rhos = torch.linalg.solve(system, torch.stack(rhs))
        table["corrector_ratio"][index] = ratio
        table["corrector_rho_old"][index] = rhos[0]
        table["corrector_rho_new"][index] = rhos[-1]
    return UniPCCoefficients(**table)


class FlowUniPCScheduler:
    """Flow-matching UniPC multistep sampler for Wan2.1 (see the module docstring for the math).

    Attributes:
        num_steps: number of denoising steps (model evaluations).
        timesteps: float32 [num_steps] on `device`, 0..1000 scale: what the DiT receives at each step
            (integer-valued: sigma * num_train_timesteps truncated, exactly as diffusers casts them to int64).
        sigmas: float32 [num_steps + 1] on `device`: the flow sigma at each step, then the final 0.
        sigma_grid: "diffusers" or "wan" (see the module docstring).

    Usage: for i in range(num_steps): sample = scheduler.step(dit(sample, timesteps[i]), sample, i).
    Step 0 always starts a new trajectory; later steps must come in order.
    """

    def __init__(self, num_steps: int, shift: float = 5.0, num_train_timesteps: int = 1000,
                 device: torch.device | str | None = None, sigma_grid: str = "diffusers"):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) \
                or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not 0 < shift < math.inf:
            raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
        if sigma_grid not in SIGMA_GRIDS:
            raise ValueError(f"sigma_grid must be one of {list(SIGMA_GRIDS)}, got {sigma_grid!r}")
        self.num_steps = num_steps
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        self.sigma_grid = sigma_grid
        grid = wan_flow_sigmas if sigma_grid == "wan" else shifted_flow_sigmas
        sigmas64 = grid(num_steps, self.shift, num_train_timesteps)
        timesteps = (sigmas64 * num_train_timesteps).astype(np.int64)
        sigmas = torch.from_numpy(np.concatenate([sigmas64, [0.0]]).astype(np.float32))
        self._orders = predictor_orders(num_steps)
        host_coefficients = unipc_coefficients(sigmas, self._orders)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.float32)
        self.sigmas = sigmas.to(device)
        self._coefficients = {self.sigmas.device: host_coefficients.to(self.sigmas.device)}
        self._next_step = 0
        self._x0_ring: torch.Tensor | None = None      # float32 [3, *shape]: m_i lives in slot i % 3
        self._last_sample: torch.Tensor | None = None  # float32 [*shape]: sample the last predictor started from

    def reset(self) -> None:
        """Forget the current trajectory and free its history buffers."""
        self._next_step = 0
        self._x0_ring = None
        self._last_sample = None

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, step_index: int) -> torch.Tensor:
        """Advance the trajectory from sigmas[step_index] to sigmas[step_index + 1].

        Args:
            model_output: the DiT's flow prediction at `sample`, any float dtype, same shape as `sample`.
            sample: the current latents x_i, any shape, any float dtype.
            step_index: python int; 0 starts a new trajectory, others must follow the previous call.
        Returns:
            x_{i+1}, same shape, dtype and device as `sample` (math in float32). At the last step this is
            the final x0 prediction.
        """
        index = self._check_step(model_output, sample, step_index)
        coef = self._coefficients_on(sample.device)
        x = sample.float()
        flow = model_output.float()
        if index == 0:
            self._allocate_history(x)
        ring = self._x0_ring
        x0 = torch.sub(x, coef.sigma[index] * flow, out=ring[index % 3])
        if index > 0:
            x = self._corrected_sample(coef, index, x0)
        x_next = coef.predictor_sample[index] * x - coef.predictor_x0[index] * x0
        if self._orders[index] == 2:
            slope = (ring[(index - 1) % 3] - x0) / coef.predictor_ratio[index]
            x_next = x_next - coef.predictor_x0[index] * (0.5 * slope)
        if index + 1 < self.num_steps:
            self._last_sample.copy_(x)
        self._next_step = index + 1
        return x_next.to(sample.dtype)

    def _corrected_sample(self, coef: UniPCCoefficients, index: int, x0: torch.Tensor) -> torch.Tensor:
        """UniC: recompute x_index from the previous start sample with the new x0 prediction (float32)."""
        ring = self._x0_ring
        x0_prev = ring[(index - 1) % 3]
        base = coef.corrector_sample[index] * self._last_sample - coef.corrector_x0[index] * x0_prev
        correction = coef.corrector_rho_new[index] * (x0 - x0_prev)
        if self._orders[index - 1] == 2:
            slope = (ring[(index - 2) % 3] - x0_prev) / coef.corrector_ratio[index]
            correction = coef.corrector_rho_old[index] * slope + correction
        return base - coef.corrector_x0[index] * correction

    def _check_step(self, model_output: torch.Tensor, sample: torch.Tensor, step_index: int) -> int:
        if isinstance(step_index, bool) or not isinstance(step_index, int):
            raise TypeError(f"step_index must be a python int, got {type(step_index).__name__}")
        if not 0 <= step_index < self.num_steps:
            raise IndexError(f"step_index {step_index} out of range for {self.num_steps} steps")
        if step_index != 0 and step_index != self._next_step:
            raise RuntimeError(f"step {step_index} called but the trajectory is at step {self._next_step}; "
                               "steps must run in order (step 0 starts a new trajectory)")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        if model_output.device != sample.device:
            raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
        if not (sample.is_floating_point() and model_output.is_floating_point()):
            raise TypeError(f"sample and model_output must be floating point, got {sample.dtype} and "
                            f"{model_output.dtype}")
        if step_index != 0 and (self._last_sample.shape != sample.shape
                                or self._last_sample.device != sample.device):
            raise ValueError(f"sample {tuple(sample.shape)} on {sample.device} does not match the trajectory "
                             f"{tuple(self._last_sample.shape)} on {self._last_sample.device}")
        return step_index

    def _allocate_history(self, x: torch.Tensor) -> None:
        """(Re)use float32 history buffers shaped like `x` for a new trajectory."""
        if self._x0_ring is None or self._x0_ring.shape[1:] != x.shape or self._x0_ring.device != x.device:
            self._x0_ring = torch.empty((3, *x.shape), dtype=torch.float32, device=x.device)
            self._last_sample = torch.empty(x.shape, dtype=torch.float32, device=x.device)

    def _coefficients_on(self, device: torch.device) -> UniPCCoefficients:
        """The coefficient tables on `device` (copied there once, on first use)."""
        if device not in self._coefficients:
            self._coefficients[device] = next(iter(self._coefficients.values())).to(device)
        return self._coefficients[device]
