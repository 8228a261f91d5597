"""Key mapping official <-> diffusers, and safetensors loading (single file and sharded)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from numina_engine.engine.config import WAN_TINY, WanConfig
from numina_engine.engine.model import WanDiT
from numina_engine.engine.weights import diffusers_to_official, load_safetensors_state_dict, official_to_diffusers
from numina_engine.errors import CheckpointError
from full_stack import full_stack

NO_NORMS = WanConfig(dim=48, ffn_dim=80, num_heads=2, num_layers=2, text_dim=24, qk_norm=False,
                     cross_attn_norm=False)


def official_state_dict(config: WanConfig, seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in WanDiT(config).state_dict().items()}


@pytest.mark.parametrize("config", [WAN_TINY, NO_NORMS], ids=["tiny", "no_qk_or_cross_norm"])
def test_round_trip_is_identity(config):
    official = official_state_dict(config, seed=0)
    diffusers_form = official_to_diffusers(official)
    assert len(diffusers_form) == len(official)
    back = diffusers_to_official(diffusers_form)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)
    again = official_to_diffusers(back)
    assert set(again) == set(diffusers_form) and all(again[k] is diffusers_form[k] for k in again)


def test_diffusers_names_are_wan_transformer_names():
    diffusers = full_stack("diffusers")
    kwargs = {k: v for k, v in WAN_TINY.to_diffusers_json().items() if not k.startswith("_")}
    reference = diffusers.WanTransformer3DModel(**kwargs).state_dict()
    official = official_state_dict(WAN_TINY, seed=1)
    converted = official_to_diffusers(official)
    assert set(converted) == set(reference)
    assert all(converted[k].shape == reference[k].shape for k in reference)
    # official norm3 (cross-attention LayerNorm) is diffusers' norm2
    assert converted["blocks.1.norm2.weight"] is official["blocks.1.norm3.weight"]
    assert converted["scale_shift_table"] is official["head.modulation"]


def test_missing_and_unexpected_keys_are_listed():
    official = official_state_dict(WAN_TINY, seed=2)
    without = {k: v for k, v in official.items() if k != "blocks.1.cross_attn.o.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.1\.cross_attn\.o\.bias'\]"):
        official_to_diffusers(without)
    without_top = {k: v for k, v in official.items() if k != "head.modulation"}
    with pytest.raises(CheckpointError, match=r"missing keys \['head\.modulation'\]"):
        official_to_diffusers(without_top)
    partial_norms = {k: v for k, v in official.items() if k != "blocks.2.norm3.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.2\.norm3\.bias'\]"):
        official_to_diffusers(partial_norms)
    extra = {**official, "img_emb.proj.0.weight": torch.randn(3), "blocks.0.cross_attn.k_img.weight": torch.randn(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks\.0\.cross_attn\.k_img\.weight', "
                                              r"'img_emb\.proj\.0\.weight'\]"):
        official_to_diffusers(extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks\.0\.cross_attn\.k\.bias', .*"
                                              r"\(\d+ in all\)\]. The state dict is already in official naming"):
        diffusers_to_official(official)


def write_single(folder, state_dict):
    folder.mkdir()
    save_file(state_dict, str(folder / "diffusion_pytorch_model.safetensors"))


def write_sharded(folder, state_dict, num_shards):
    folder.mkdir()
    names = sorted(state_dict)
    weight_map = {}
    for i in range(num_shards):
        shard = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {name: state_dict[name] for name in names[i::num_shards]}
        save_file(part, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture
def checkpoint_tensors():
    official = official_state_dict(WAN_TINY, seed=3)
    official["blocks.0.modulation"] = official["blocks.0.modulation"].to(torch.bfloat16)
    return official


def test_sharded_and_single_give_identical_tensors(tmp_path, checkpoint_tensors):
    write_single(tmp_path / "single", checkpoint_tensors)
    write_sharded(tmp_path / "sharded", checkpoint_tensors, num_shards=3)
    single = load_safetensors_state_dict(tmp_path / "single")
    sharded = load_safetensors_state_dict(tmp_path / "sharded")
    assert set(single) == set(sharded) == set(checkpoint_tensors)
    for name, tensor in checkpoint_tensors.items():
        assert single[name].dtype == sharded[name].dtype == tensor.dtype
        assert torch.equal(single[name], tensor) and torch.equal(sharded[name], tensor)
    model = WanDiT(WAN_TINY)
    model.load_state_dict(sharded, strict=True)


def test_missing_shard_is_named(tmp_path, checkpoint_tensors):
    write_sharded(tmp_path / "ckpt", checkpoint_tensors, num_shards=3)
    (tmp_path / "ckpt" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lacks shard\(s\) \['diffusion_pytorch_model-00002-of-00003"):
        load_safetensors_state_dict(tmp_path / "ckpt")


@pytest.mark.parametrize("index_text, message", [
    ("{not json", "is not valid JSON"),
    ('{"metadata": {}}', "no non-empty 'weight_map'"),
    ('{"weight_map": {"a": 3}}', "not a .safetensors file name"),
    ('{"weight_map": {"a": "../elsewhere/x.safetensors"}}', "not a .safetensors file name"),
])
def test_malformed_index_is_reported(tmp_path, checkpoint_tensors, index_text, message):
    write_sharded(tmp_path / "ckpt", checkpoint_tensors, num_shards=2)
    (tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors.index.json").write_text(index_text)
    with pytest.raises(CheckpointError, match=message):
        load_safetensors_state_dict(tmp_path / "ckpt")


def test_index_disagreeing_with_shards_is_reported(tmp_path, checkpoint_tensors):
    write_sharded(tmp_path / "ckpt", checkpoint_tensors, num_shards=2)
    index_path = tmp_path / "ckpt" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["head.modulation"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"unlisted \['head\.modulation'\]"):
        load_safetensors_state_dict(tmp_path / "ckpt")


def test_absent_ambiguous_or_damaged_weights_are_reported(tmp_path, checkpoint_tensors):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no DiT weights"):
        load_safetensors_state_dict(tmp_path / "empty")
    write_sharded(tmp_path / "both", checkpoint_tensors, num_shards=2)
    save_file(checkpoint_tensors, str(tmp_path / "both" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="holds both"):
        load_safetensors_state_dict(tmp_path / "both")
    write_single(tmp_path / "damaged", checkpoint_tensors)
    path = tmp_path / "damaged" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        load_safetensors_state_dict(tmp_path / "damaged")
