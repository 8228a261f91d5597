"""CUDA graphs of the denoising step (numina_engine/engine/cuda_graphs.py) on the embedded demo model.

On a GPU: graphs on and off give bit-identical latents and frames, plain and NUMINA (phase 2 forced
to run, with modulated and unmodulated steps), and the graphs are really captured and replayed. At
256x256x17 the self-attention has 1,280 keys: past 1,024, where cuDNN attention has had CUDA-graph
bugs in some versions. On the CPU, where graphs are never used: every step runs the forward eagerly
with the switch on or off, and the report says why graphs were not used (GPU-only otherwise).
"""
from __future__ import annotations

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.engine import pipeline
from numina_engine.numina.config import LABEL_ADDED_BASE
from assets_paths import TINY_WAN

PROMPT = "Three cats chasing two dogs"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_on_the_cpu_every_step_runs_the_forward_eagerly(monkeypatch):
    engine = Engine.load(TINY_WAN, device="cpu")
    calls = []
    real_forward = engine.model.dit.forward
    monkeypatch.setattr(engine.model.dit, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    request = GenerationRequest(prompt=PROMPT, width=64, height=64, steps=3, numina=False)
    on = pipeline.generate(engine.model, request, progress=False, cuda_graphs=True)
    assert len(calls) == 3
    off = pipeline.generate(engine.model, request, progress=False, cuda_graphs=False)
    assert len(calls) == 6
    assert torch.equal(on.frames, off.frames)
    assert on.report["cuda_graphs"] == {"enabled": False, "reason": "no CUDA device (cpu)"}
    assert off.report["cuda_graphs"] == {"enabled": False, "reason": "turned off (--no-cuda-graphs)"}


@pytest.fixture(scope="module")
def gpu_engine() -> Engine:
    torch.manual_seed(0)
    return Engine.load(TINY_WAN, device="cuda")


def add_instance(reference: dict[str, torch.Tensor], refined: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plant a 2x2-token added instance in every noun's refined layout in every frame: phase 2 must regenerate."""
    for labels in refined.values():
        labels[:, 1:3, 1:3] = LABEL_ADDED_BASE
    return refined


def generate_recording_latents(engine: Engine, request: GenerationRequest, *, cuda_graphs: bool, edit_layout=None):
    """(result, the latents of its final VAE decode) of one generation."""
    decoded = []
    vae = engine.model.vae
    real_decode = vae.decode
    vae.decode = lambda latents, **kwargs: decoded.append(latents.clone()) or real_decode(latents, **kwargs)
    try:
        result = pipeline.generate(engine.model, request, progress=False, cuda_graphs=cuda_graphs,
                                   edit_layout=edit_layout)
    finally:
        del vae.decode                                   # the class's method again
    return result, decoded[-1]


@needs_cuda
def test_plain_run_with_graphs_equals_the_eager_run_bit_for_bit(gpu_engine):
    request = GenerationRequest(prompt=PROMPT, numina=False, width=256, height=256, frames=17, steps=4)
    graphed, graphed_latents = generate_recording_latents(gpu_engine, request, cuda_graphs=True)
    eager, eager_latents = generate_recording_latents(gpu_engine, request, cuda_graphs=False)
    assert graphed.report["cuda_graphs"] == {"enabled": True, "graphs_captured": 1, "replays": 3}
    assert torch.equal(graphed_latents, eager_latents)
    assert torch.equal(graphed.frames, eager.frames)


@needs_cuda
def test_numina_run_with_graphs_equals_the_eager_run_bit_for_bit(gpu_engine):
    # 8 steps; delta(t) reaches its floor from step 4 (modulation_center -16), so phase 2 replays a
    # modulated graph for steps 1-3 (delta written into the graph's input each step) and a plain one after.
    overrides = {"reference_step": 3, "modulation_center": -16.0, "easycache_warmup": 3}
    request = GenerationRequest(prompt=PROMPT, width=256, height=256, frames=17, steps=8,
                                counts={"cats": 2, "dogs": 3}, numina_overrides=overrides)
    graphed, graphed_latents = generate_recording_latents(gpu_engine, request, cuda_graphs=True,
                                                          edit_layout=add_instance)
    eager, eager_latents = generate_recording_latents(gpu_engine, request, cuda_graphs=False,
                                                      edit_layout=add_instance)
    numina = graphed.report["numina"]
    assert numina["regenerated"] and numina["phase2_modulated_steps"] == 4
    # phase 1: steps 0-2 (capture + 2 replays); phase 2: step 0 runs the conditional row alone (phase 1's
    # unconditional prediction reused), modulated 1-3 (capture + 2 replays), plain 4-7 (capture + 3 replays)
    assert graphed.report["cuda_graphs"] == {"enabled": True, "graphs_captured": 3, "replays": 7}
    assert numina["best_head_per_frame"] == eager.report["numina"]["best_head_per_frame"]
    assert torch.equal(graphed.layout.preview_frames, eager.layout.preview_frames)
    assert torch.equal(graphed_latents, eager_latents)
    assert torch.equal(graphed.frames, eager.frames)
