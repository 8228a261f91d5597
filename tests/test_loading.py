"""load_model: a whole checkpoint in the official layout and the same weights in the diffusers layout
load to identical models and make identical videos; incomplete folders give errors naming the file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from numina_engine import Engine, GenerationRequest
from numina_engine.engine.config import WanConfig
from numina_engine.engine.loading import OFFICIAL_FILES, load_model
from numina_engine.engine.model import WanDiT
from numina_engine.engine.text_encoder import TextEncoder
from numina_engine.engine.vae import WanVAE
from numina_engine.engine.weights import official_to_diffusers
from numina_engine.errors import CheckpointError, UserInputError

from full_stack import full_stack  # noqa: E402

full_stack("diffusers")
from test_text_encoder import DIM as T5_DIM, TOKENIZER_ASSET, official_t5_state  # noqa: E402
from test_vae import WAN_LIKE as SMALL_VAE, random_official_state  # noqa: E402

DIT = WanConfig(dim=48, ffn_dim=96, num_heads=3, num_layers=3, text_dim=T5_DIM, freq_dim=32)


def write_official(folder: Path) -> None:
    """Official release layout at a tiny size: config.json, sharded DiT safetensors, T5 and VAE .pth, tokenizer."""
    torch.manual_seed(11)
    state = {k: v.contiguous() for k, v in WanDiT(DIT).state_dict().items()}
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, shard_keys in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in shard_keys}, folder / name)
        weight_map.update({k: name for k in shard_keys})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(DIT.to_official_json()))
    torch.save(official_t5_state(seed=5), folder / OFFICIAL_FILES["t5"])
    torch.save(random_official_state(SMALL_VAE, seed=6), folder / OFFICIAL_FILES["vae"])
    shutil.copytree(TOKENIZER_ASSET, folder / OFFICIAL_FILES["tokenizer"])
    (folder / "numina_engine.json").write_text(json.dumps({"width": 32, "height": 32, "frames": 5, "steps": 2}))


def write_diffusers_from(official: Path, folder: Path) -> None:
    """The same weights re-saved in the diffusers WanPipeline layout by the libraries themselves."""
    (folder / "transformer").mkdir(parents=True)
    model = load_model(official, device="cpu")
    save_file({k: v.contiguous() for k, v in official_to_diffusers(model.dit.state_dict()).items()},
              folder / "transformer" / "diffusion_pytorch_model.safetensors")
    (folder / "transformer" / "config.json").write_text(json.dumps(DIT.to_diffusers_json()))
    TextEncoder.from_official(official).model.save_pretrained(folder / "text_encoder")
    shutil.copytree(TOKENIZER_ASSET, folder / "tokenizer")
    WanVAE.from_official(official / OFFICIAL_FILES["vae"]).model.save_pretrained(folder / "vae")
    shutil.copy(official / "numina_engine.json", folder / "numina_engine.json")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    official = tmp_path_factory.mktemp("official")
    write_official(official)
    diffusers_dir = tmp_path_factory.mktemp("diffusers")
    write_diffusers_from(official, diffusers_dir)
    return official, diffusers_dir


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_both_layouts_load_identical_weights_and_videos(checkpoints):
    official, diffusers_dir = checkpoints
    a, b = load_model(official, device="cpu"), load_model(diffusers_dir, device="cpu")
    assert (a.layout, b.layout) == ("official", "diffusers")
    assert_same_parameters(a.dit, b.dit)
    assert_same_parameters(a.text_encoder.model, b.text_encoder.model)
    assert_same_parameters(a.vae.model, b.vae.model)
    request = GenerationRequest(prompt="two red circles drifting", seed=3, numina=False)
    video_a = Engine(a).generate(request, progress=False).frames
    video_b = Engine(b).generate(request, progress=False).frames
    assert video_a.shape == (5, 32, 32, 3) and video_a.dtype == torch.uint8
    assert torch.equal(video_a, video_b)


@pytest.mark.parametrize("missing", [OFFICIAL_FILES["t5"], OFFICIAL_FILES["vae"],
                                     "diffusion_pytorch_model-00002-of-00002.safetensors"])
def test_missing_official_file_is_named(checkpoints, tmp_path, missing):
    official, _ = checkpoints
    broken = tmp_path / "ckpt"
    shutil.copytree(official, broken)
    (broken / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        load_model(broken, device="cpu")


def test_folder_that_is_no_checkpoint_says_what_is_expected(tmp_path):
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(CheckpointError, match="neither an official Wan2.1 folder"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere", device="cpu")


def test_malformed_config_is_reported(checkpoints, tmp_path):
    official, _ = checkpoints
    broken = tmp_path / "ckpt"
    shutil.copytree(official, broken)
    (broken / "config.json").write_text("{\"dim\": 48,")
    with pytest.raises(CheckpointError, match="config.json.*not valid JSON"):
        load_model(broken, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    expected = "is a CPU-only build" if torch.version.cuda is None else "sees no GPU"
    with pytest.raises(UserInputError, match=expected):
        load_model(None, device="cuda")


@pytest.mark.parametrize("name", ["tpu", "meta", "mps", "cuda:x", "potato"])
def test_devices_the_engine_does_not_run_on_are_refused(name):
    with pytest.raises(UserInputError, match=f"--device {name} is not a device this engine runs on"):
        load_model(None, device=name)
