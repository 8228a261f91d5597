"""CUDA graphs of the denoising step: the batched CFG forward, captured once per kind of step and replayed.

A DiT forward launches a few thousand kernels; replaying a captured graph launches them as one
unit, without Python or launch overhead between them. Kinds of step, one graph each:

- plain (state None): phase 1's computed steps, plain Wan2.1, phase 2's unmodulated steps;
- modulated (one graph per `ForwardState` object carrying a `Modulation`): the graph reads the plan
  tensors and the 0-dim device tensor `delta` where they are, so the caller writes each step's
  strength into `delta` in place (`fill_` / `copy_`) before the call.

States that extract (attention maps written into the state, an early stop) always run eagerly.

Capture is lazy. The first call for a kind runs the forward eagerly on a side stream (PyTorch's
warm-up: Triton compilation, cuDNN plans, cuBLAS workspaces and the DiT's RoPE tables are set up
there, never during capture) and returns that result; then it captures the graph on the same
stream without waiting for the warm-up to finish, so the host's capture work overlaps the GPU's
warm-up work (torch.cuda.graph would synchronise and empty the allocator's cache first). Later calls copy
their inputs into the graph's static buffers (latents, timestep, context) and replay. Nothing in the
captured forward reads a value back to the host (`attention.py`, `numina/modulation.py: layout_bias`
and the column-bias kernel are written for that).

All graphs allocate from one memory pool: a step's activations take about the memory of one eager
forward, whichever graph runs. Each result is copied out of the pool, so replaying one graph never
overwrites a result another handed out. `release()` drops the graphs and gives the pool back before
eager work that needs the memory (the extraction forward, the VAE decode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .forward_state import ForwardState

# forward(latents, timestep, context, state) -> flow: the step's batched forward (pipeline.cfg_forward).
StepForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "ForwardState | None"], torch.Tensor]


def is_capturable(state: ForwardState | None) -> bool:
    """Plain and modulated forwards are captured; extracting ones (maps out, early stop) are not."""
    return state is None or (state.extraction is None and state.stop_after_layer is None)


@dataclass
class _CapturedStep:
    graph: torch.cuda.CUDAGraph
    latents: torch.Tensor             # static inputs, written before each replay
    timestep: torch.Tensor
    context: torch.Tensor
    state: ForwardState | None        # kept alive: the graph reads its tensors
    output: torch.Tensor              # static output, in the shared pool


class StepGraphs:
    """The denoising step's forward, replayed from CUDA graphs; eager where graphs are not used.

    `forward(latents, timestep, context, state)` is the step's batched forward; calls take the same
    arguments and return the same result (a fresh tensor). Graphs are used when `enabled` and
    `device` is a CUDA device and `unsupported` is None; otherwise every call runs `forward` eagerly (no
    error on the CPU). `unsupported`: why this forward cannot be captured (e.g. a DiT under a ParallelPlan),
    the reason summary() gives.
    A graph is keyed by the state object and the input shapes and dtypes; a state's tensors must
    keep their storage while its graph lives (write new values in place). Use one instance within
    one inference-mode scope (its static buffers are written in place).
    """

    def __init__(self, forward: StepForward, device: torch.device, *, enabled: bool = True,
                 unsupported: str | None = None):
        self.forward = forward
        self.device = torch.device(device)
        self.requested = enabled
        self.unsupported = unsupported
        self.enabled = enabled and unsupported is None and self.device.type == "cuda"
        self.captured = 0          # graphs captured so far (each after one eager warm-up call)
        self.replayed = 0
        self._steps: dict[tuple, _CapturedStep] = {}
        self._pool = None          # shared memory pool of the live graphs, made on first capture
        self._stream = torch.cuda.Stream(self.device) if self.enabled else None

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 state: ForwardState | None = None) -> torch.Tensor:
        if not self.enabled or not is_capturable(state):
            return self.forward(latents, timestep, context, state)
        key = (id(state), *((tuple(t.shape), t.dtype) for t in (latents, timestep, context)))
        step = self._steps.get(key)
        if step is None:
            output, self._steps[key] = self._warm_up_and_capture(latents, timestep, context, state)
            return output
        step.latents.copy_(latents)
        step.timestep.copy_(timestep)
        step.context.copy_(context)
        step.graph.replay()
        self.replayed += 1
        return step.output.clone()

    def _warm_up_and_capture(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                             state: ForwardState | None) -> tuple[torch.Tensor, _CapturedStep]:
        """(this call's result from the eager warm-up, the step captured afterwards)."""
        current = torch.cuda.current_stream(self.device)
        inputs = [t.clone() for t in (latents, timestep, context)]     # the static buffers
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            output = self.forward(*inputs, state)
        # The caller's stream uses `output` once the warm-up is done; record that use, so that its memory
        # is not handed back to the side stream early.
        current.wait_stream(self._stream)
        output.record_stream(current)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Captured right behind the warm-up on the same stream, without torch.cuda.graph's device
        # synchronisation and cache emptying: recording costs host time only, which then overlaps the
        # warm-up forward still running on the GPU instead of leaving the GPU idle.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(self._stream):
            graph.capture_begin(pool=self._pool)
            try:
                static_output = self.forward(*inputs, state)
            finally:
                graph.capture_end()
        self.captured += 1
        return output, _CapturedStep(graph, *inputs, state, static_output)

    def release(self) -> None:
        """Drop the captured graphs and return their memory to the device; later calls capture anew."""
        if not self._steps:
            return
        self._steps.clear()
        self._pool = None
        torch.cuda.empty_cache()

    def summary(self) -> dict:
        """For report.json: whether graphs were used, how many were captured, how many replays ran."""
        if not self.enabled:
            reason = ("turned off (--no-cuda-graphs)" if not self.requested
                      else (self.unsupported or f"no CUDA device ({self.device})"))
            return {"enabled": False, "reason": reason}
        return {"enabled": True, "graphs_captured": self.captured, "replays": self.replayed}
