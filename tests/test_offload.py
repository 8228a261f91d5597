"""--offload: the text encoder's weights on the CPU (streamed to the device to encode), the DiT off the GPU
while the VAE decodes ("full"), a smaller extraction maps budget ("full"); the video unchanged.

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
from numina_engine.engine.extraction import DEFAULT_MAPS_BUDGET_BYTES
from numina_engine.engine.offload import (FULL_OFFLOAD_MAPS_BUDGET_BYTES, load_offloaded, maps_budget_bytes,
                                          offload_mode, park_dit_on_cpu, place_for_generation)
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


def test_offload_modes_and_what_each_changes():
    assert [offload_mode(v) for v in (False, None, True, "none", "text-encoder", "full")] == [
        "none", "none", "full", "none", "text-encoder", "full"]
    with pytest.raises(ValueError, match="text-encoder"):
        offload_mode("gpu")
    assert maps_budget_bytes("full") == FULL_OFFLOAD_MAPS_BUDGET_BYTES < DEFAULT_MAPS_BUDGET_BYTES
    assert maps_budget_bytes("none") == maps_budget_bytes("text-encoder") == DEFAULT_MAPS_BUDGET_BYTES


@pytest.mark.parametrize("offload", ["none", "text-encoder", "full"])
def test_a_generation_places_before_encoding_and_parks_the_dit_before_the_decode(monkeypatch, offload):
    events = []
    engine = Engine.load(TINY_WAN, device="cpu", offload=offload)
    model = engine.model
    real_place, real_park, real_decode = pipeline.place_for_generation, pipeline.park_dit_on_cpu, model.vae.decode
    real_encode = model.text_encoder.encode
    monkeypatch.setattr(pipeline, "place_for_generation", lambda m: events.append("place") or real_place(m))
    monkeypatch.setattr(pipeline, "park_dit_on_cpu", lambda m: events.append("park") or real_park(m))
    monkeypatch.setattr(model.vae, "decode", lambda latents, **kw: events.append(("decode", kw)) or real_decode(
        latents, **kw))
    monkeypatch.setattr(model.text_encoder, "encode", lambda prompts, device=None: events.append(
        ("encode", device)) or real_encode(prompts, device=device))
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=False, width=64, height=64, steps=2)
    result = engine.generate(request, progress=False)
    expected = {"none": [("encode", None), ("decode", {"cache_on_cpu": False})],
                "text-encoder": ["place", ("encode", model.device), ("decode", {"cache_on_cpu": False})],
                "full": ["place", ("encode", model.device), "park", ("decode", {"cache_on_cpu": True})]}[offload]
    assert events == expected
    assert result.report["offload"] == offload and ("offload" in result.timings_s) is (offload != "none")
    assert devices(model.text_encoder.model) == {"cpu"}


def test_every_offload_mode_makes_the_same_video_and_full_offload_extracts_under_its_budget(monkeypatch):
    """On the CPU the placements are no-ops, so this checks that no mode changes the computation (the
    chunked decode, the maps budget); the GPU test below checks the real moves."""
    budgets = []
    real_pass = pipeline.reference_pass

    def reference_pass(*args, maps_budget_bytes, **kwargs):
        budgets.append(maps_budget_bytes)
        return real_pass(*args, maps_budget_bytes=maps_budget_bytes, **kwargs)

    monkeypatch.setattr(pipeline, "reference_pass", reference_pass)
    request = GenerationRequest(prompt="Three cats chasing two dogs", width=48, height=80, frames=9, steps=3,
                                counts={"cats": 3, "dogs": 2},        # given: no spaCy needed (the GPU image lacks it)
                                numina_overrides={"reference_step": 1})
    model = load_model(TINY_WAN, device="cpu")
    videos = {mode: pipeline.generate(model, request, progress=False, offload=mode).frames
              for mode in ("none", "text-encoder", "full")}
    assert budgets == [DEFAULT_MAPS_BUDGET_BYTES, DEFAULT_MAPS_BUDGET_BYTES, FULL_OFFLOAD_MAPS_BUDGET_BYTES]
    assert videos["none"].shape == (9, 80, 48, 3) and videos["none"].float().std() > 0
    assert torch.equal(videos["none"], videos["text-encoder"]) and torch.equal(videos["none"], videos["full"])


def test_cli_passes_offload_and_the_graph_switch_to_the_engine(tmp_path, capsys):
    full_stack("av")
    code = main(["run", "--prompt", "Three cats chasing two dogs", "--no-numina", "--steps", "2", "--size", "64*64",
                 "--quiet",
                 "--offload", "--no-cuda-graphs", "--out-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["offload"] == "full"
    assert report["cuda_graphs"] == {"enabled": False, "reason": "turned off (--no-cuda-graphs)"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_on_a_gpu_parks_the_dit_during_each_decode_and_brings_it_back(monkeypatch):
    engine = Engine.load(TINY_WAN, device="cuda", offload=True)
    model = engine.model
    assert model.text_encoder.device.type == "cpu" and model.vae.device.type == "cuda"
    dit_device_at_decode = []
    real_decode = model.vae.decode

    def decode(latents, **kwargs):
        dit_device_at_decode.append(next(model.dit.parameters()).device.type)
        return real_decode(latents, **kwargs)

    monkeypatch.setattr(model.vae, "decode", decode)
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=False, steps=3)
    first = engine.generate(request, progress=False)
    second = engine.generate(request, progress=False)          # needs the DiT back on the GPU
    assert dit_device_at_decode == ["cpu", "cpu"]
    assert model.text_encoder.device.type == "cpu"
    assert torch.equal(first.frames, second.frames)
    peak = second.report["peak_gpu_memory_gib"]
    assert peak["allocated"] >= max(peak["allocated_by_phase"].values()) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("numina", [False, True])
def test_offloaded_videos_on_a_gpu_equal_the_video_without_offload(numina):
    """The text encoder streamed to the GPU computes what it computes there; the decode is the same.
    A second run without offload comes first: if it differs already, the GPU run is not reproducible
    and offload is not the cause; each failure names the first stage that differs."""
    request = GenerationRequest(prompt="Three cats chasing two dogs", numina=numina, width=48, height=80, frames=9,
                                counts={"cats": 3, "dogs": 2} if numina else None,   # no spaCy on the GPU image
                                steps=3, numina_overrides={"reference_step": 1} if numina else {})
    reference = Engine.load(TINY_WAN, device="cuda").generate(request, progress=False)
    again = Engine.load(TINY_WAN, device="cuda").generate(request, progress=False)
    assert not differences(again, reference), f"two runs without offload differ: {differences(again, reference)}"
    for mode in ("text-encoder", "full"):
        engine = Engine.load(TINY_WAN, device="cuda", offload=mode)
        result = engine.generate(request, progress=False)
        assert engine.model.text_encoder.device.type == "cpu"
        assert not differences(result, reference), f"offload {mode!r}: {differences(result, reference)}"


def differences(result, reference) -> list[str]:
    """What differs between two GenerationResults, in pipeline order: NUMINA's extraction (best heads,
    instance counts), its layouts, the video (max |difference| of the uint8 frames)."""
    found = []
    numina, numina_ref = result.report.get("numina", {}), reference.report.get("numina", {})
    for key in ("best_head_per_frame", "counts_found_per_frame", "phase2"):
        if numina.get(key) != numina_ref.get(key):
            found.append(f"{key}: {numina.get(key)} vs {numina_ref.get(key)}")
    if result.layout is not None:
        for kind in ("reference", "refined"):
            ours, theirs = getattr(result.layout, kind), getattr(reference.layout, kind)
            found += [f"{kind} layout of {noun!r}: {int((ours[noun] != theirs[noun]).sum())} cells differ"
                      for noun in ours if not torch.equal(ours[noun], theirs[noun])]
    if not torch.equal(result.frames, reference.frames):
        found.append(f"frames: max |diff| {int((result.frames.int() - reference.frames.int()).abs().max())}")
    return found


def test_phase_peaks_are_per_phase_and_the_run_peak_spans_every_phase(monkeypatch):
    """PhaseTimer on a stand-in CUDA allocator: resetting the peak at each phase start must not lose the
    run's peak (report.json's `peak_gpu_memory_gib`)."""
    allocator = {"now": 0, "peak": 0}

    def allocate(size):
        allocator["now"] += size
        allocator["peak"] = max(allocator["peak"], allocator["now"])

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocator["peak"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 2 * allocator["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda device=None: allocator.update(peak=allocator["now"]))
    gib = 2 ** 30
    timer = pipeline.PhaseTimer(torch.device("cuda"))
    with timer("text encoding"):
        allocate(5 * gib)
        allocate(-5 * gib)
    allocate(7 * gib)                         # between phases: kept by the next reset's fold
    allocate(-7 * gib)
    with timer("decode"):
        allocate(3 * gib)
    with timer("decode"):
        allocate(-3 * gib)
    assert timer.peak_allocated_gib == {"text encoding": 5.0, "decode": 3.0}
    assert timer.run_peak_gib() == {"allocated": 7.0, "reserved": 14.0}
