"""--offload: the text encoder on the CPU, the DiT off the GPU while the VAE decodes."""
from __future__ import annotations

import json

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.cli import main
from assets_paths import TINY_WAN


def test_offload_on_the_cpu_is_accepted_reported_and_changes_nothing():
    """On the CPU nothing moves, so this checks the plumbing (flags, report, timings); the GPU test
    below checks that the DiT really leaves the GPU during the decode."""
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=False, width=64, height=64, steps=3)
    resident = Engine.load(TINY_WAN, device="cpu").generate(request, progress=False)
    engine = Engine.load(TINY_WAN, device="cpu", offload=True)
    offloaded = engine.generate(request, progress=False)
    assert torch.equal(offloaded.frames, resident.frames)
    assert offloaded.report["offload"] is True and resident.report["offload"] is False
    assert "offload" in offloaded.timings_s and "offload" not in resident.timings_s
    assert engine.model.text_encoder.device.type == "cpu"


def test_cli_passes_offload_and_the_graph_switch_to_the_engine(tmp_path, capsys):
    pytest.importorskip("av", reason="writing video.mp4 needs PyAV")
    code = main(["run", "--prompt", "Three cats chasing two dogs", "--no-numina", "--steps", "2", "--size", "64*64",
                 "--quiet",
                 "--offload", "--no-cuda-graphs", "--out-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["offload"] is True
    assert report["cuda_graphs"] == {"enabled": False, "reason": "turned off (--no-cuda-graphs)"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_on_a_gpu_parks_the_dit_during_each_decode_and_brings_it_back(monkeypatch):
    engine = Engine.load(TINY_WAN, device="cuda", offload=True)
    model = engine.model
    assert model.text_encoder.device.type == "cpu" and model.vae.device.type == "cuda"
    dit_device_at_decode = []
    real_decode = model.vae.decode

    def decode(latents):
        dit_device_at_decode.append(next(model.dit.parameters()).device.type)
        return real_decode(latents)

    monkeypatch.setattr(model.vae, "decode", decode)
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=False, steps=3)
    first = engine.generate(request, progress=False)
    second = engine.generate(request, progress=False)          # needs the DiT back on the GPU
    assert dit_device_at_decode == ["cpu", "cpu"]
    assert model.text_encoder.device.type == "cpu"
    assert torch.equal(first.frames, second.frames)
    assert second.report["peak_gpu_memory_gib"]["allocated"] > 0
