"""The shipped demo model (numina_engine/assets/counting-world): it loads through the normal loader,
and a two-phase NUMINA run on it finishes and writes its outputs."""
from __future__ import annotations

import json

import pytest
import torch

from numina_engine import Engine, GenerationRequest
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
    for noun in ("circles", "squares", "triangles"):
        assert len(tokenizer(noun, add_special_tokens=False).input_ids) == 1, noun


def test_two_phase_run_finishes_and_writes_outputs(engine, tmp_path):
    request = GenerationRequest(prompt="Three red circles and two blue squares drifting left.", seed=3,
                                counts={"circles": 3, "squares": 2})
    result = engine.generate(request, progress=False)
    assert result.frames.shape == (5, 32, 32, 3) and result.frames.dtype == torch.uint8
    numina = result.report["numina"]
    assert numina["enabled"] and numina["token_grid"] == [5, 16, 16]
    assert {"phase 1", "layout", "phase 2", "decode"} <= set(result.timings_s)
    paths = engine.save(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout.png", "report.json", "video.mp4"]
    report = json.loads(paths["report"].read_text())
    assert report["numina"]["counts_asked"] == {"circles": 3, "squares": 2}
