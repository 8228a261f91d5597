"""The shipped demo model (numina_engine/assets/counting-world): it loads through the normal loader,
and a two-phase NUMINA run on it finishes and writes its outputs."""
from __future__ import annotations

import json

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.demo.counter import count_world_nouns
from numina_engine.demo.world import KINDS
from numina_engine.engine.loading import EMBEDDED_DEFAULT, load_model
from numina_engine.engine.pixel_space import PixelSpace

MAX_WEIGHT_BYTES = 20 * 10 ** 6


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(device="cpu")


def test_loads_through_the_normal_loader_as_the_default():
    model = load_model(None, device="cpu")
    assert model.path == EMBEDDED_DEFAULT and model.layout == "diffusers"
    assert isinstance(model.vae, PixelSpace)
    assert (model.geometry.channels, model.geometry.temporal_factor, model.geometry.spatial_factor) == (3, 1, 1)
    config = model.dit.config
    assert (config.in_dim, config.out_dim, config.dim, config.num_layers, config.patch_size) == (3, 3, 192, 8, (1, 2, 2))
    assert (model.defaults.width, model.defaults.height, model.defaults.frames, model.defaults.steps) == (32, 32, 5, 20)
    assert model.defaults.numina["reference_layer"] < config.num_layers
    assert all(torch.isfinite(p).all() for p in model.dit.parameters())
    weights = sum(p.stat().st_size for p in EMBEDDED_DEFAULT.rglob("*.safetensors"))
    assert weights <= MAX_WEIGHT_BYTES


def test_tokenizer_keeps_the_world_nouns_whole(engine):
    tokenizer = engine.model.text_encoder.tokenizer
    for kind in KINDS:
        for noun in (kind.noun, kind.plural):
            assert len(tokenizer(noun, add_special_tokens=False).input_ids) == 1, noun


def test_the_checkpoint_names_the_worlds_counter():
    assert load_model(None, device="cpu").defaults.counter == "counting-world"


def test_two_phase_run_regenerates_and_reports_what_the_video_shows(engine, tmp_path):
    """Six apples on a 16x16 grid: the reference layout never has all six, so the plan must add."""
    request = GenerationRequest(prompt="Six apples and one box drifting left.", seed=3,
                                counts={"apples": 6, "box": 1})
    result = engine.generate(request, progress=False)
    assert result.frames.shape == (5, 32, 32, 3) and result.frames.dtype == torch.uint8
    numina = result.report["numina"]
    assert numina["enabled"] and numina["token_grid"] == [5, 16, 16]
    assert numina["counts_found_per_frame"]["apples"] != [6] * 5
    assert numina["regenerated"] and numina["phase2_modulated_steps"] > 0
    assert {"phase 1", "layout", "phase 2", "decode"} <= set(result.timings_s)
    # the finished video's counts, by the world's exact counter on the returned frames
    assert numina["final_counts_per_frame"] == count_world_nouns(result.frames, ["apples", "box"])
    paths = engine.save(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout.png", "report.json", "video.mp4"]
    report = json.loads(paths["report"].read_text())
    assert report["numina"]["counts_asked"] == {"apples": 6, "box": 1}
    assert report["numina"]["final_counts_per_frame"] == numina["final_counts_per_frame"]


def test_a_noun_the_world_does_not_know_gets_no_final_counts(engine):
    result = engine.generate(GenerationRequest(prompt="Two cats drifting left.", seed=0, counts={"cats": 2},
                                               steps=10), progress=False)
    assert result.report["numina"]["final_counts_per_frame"] is None
