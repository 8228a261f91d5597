"""--offload: the text encoder on the CPU, the DiT off the GPU while the VAE decodes.

On the CPU the placement functions are checked with `meta` standing in for the accelerator (a device
that is not the CPU: where each module's parameters end up can differ), and the order in which a
generation calls them; the GPU test checks the real moves during a generation.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.cli import main
from numina_engine.engine import pipeline
from numina_engine.engine.loading import load_model
from numina_engine.engine.offload import load_offloaded, park_dit_on_cpu, place_for_generation
from assets_paths import TINY_WAN
from full_stack import full_stack

FAKE_ACCELERATOR = torch.device("meta")


def devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def test_offloaded_load_puts_the_text_encoder_on_the_cpu_and_the_rest_on_the_device():
    model = load_offloaded(TINY_WAN, device=FAKE_ACCELERATOR)
    assert model.device == FAKE_ACCELERATOR
    assert devices(model.text_encoder.model) == {"cpu"}
    assert devices(model.dit) == {"meta"} and devices(model.vae.model) == {"meta"}


def test_placement_moves_the_dit_to_the_device_and_the_text_encoder_to_the_cpu():
    model = dataclasses.replace(load_model(TINY_WAN, device="cpu"), device=FAKE_ACCELERATOR)
    place_for_generation(model)
    assert devices(model.dit) == {"meta"} and devices(model.text_encoder.model) == {"cpu"}
    parked = load_model(TINY_WAN, device="cpu")
    parked.dit.to(FAKE_ACCELERATOR)
    parked.dit.to_empty(device="cpu")       # meta has no data to copy back: what park_dit_on_cpu does to it
    park_dit_on_cpu(parked)
    assert devices(parked.dit) == {"cpu"}


@pytest.mark.parametrize("offload", [False, True])
def test_a_generation_places_before_encoding_and_parks_the_dit_before_the_decode(monkeypatch, offload):
    events = []
    engine = Engine.load(TINY_WAN, device="cpu", offload=offload)
    model = engine.model
    real_place, real_park, real_decode = pipeline.place_for_generation, pipeline.park_dit_on_cpu, model.vae.decode
    real_encode = model.text_encoder.encode
    monkeypatch.setattr(pipeline, "place_for_generation", lambda m: events.append("place") or real_place(m))
    monkeypatch.setattr(pipeline, "park_dit_on_cpu", lambda m: events.append("park") or real_park(m))
    monkeypatch.setattr(model.vae, "decode", lambda latents: events.append("decode") or real_decode(latents))
    monkeypatch.setattr(model.text_encoder, "encode", lambda prompts: events.append("encode") or real_encode(prompts))
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=False, width=64, height=64, steps=2)
    result = engine.generate(request, progress=False)
    assert events == (["place", "encode", "park", "decode"] if offload else ["encode", "decode"])
    assert result.report["offload"] is offload and ("offload" in result.timings_s) is offload
    assert devices(model.text_encoder.model) == {"cpu"}


def test_cli_passes_offload_and_the_graph_switch_to_the_engine(tmp_path, capsys):
    full_stack("av")
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
