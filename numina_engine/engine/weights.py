"""DiT weights on disk: safetensors reading (single file or sharded) and the key mapping between
diffusers' `WanTransformer3DModel` names and the official Wan2.1 names that `WanDiT` uses.

The mapping only renames: every tensor keeps its shape and values.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

# Top-level tensors (official name, diffusers name), without the .weight/.bias suffix.
_TOP_LEVEL = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
)
_TOP_LEVEL_TENSORS = (("head.modulation", "scale_shift_table"),)

# Per-block layers (official, diffusers), relative to `blocks.N.`, without the .weight/.bias suffix.
_BLOCK_LINEARS = (
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
)
_BLOCK_TENSORS = (("modulation", "scale_shift_table"),)
# Optional per-block groups (qk_norm, cross_attn_norm): present in every block or in none.
_BLOCK_QK_NORM = (("self_attn.norm_q.weight", "attn1.norm_q.weight"),
                  ("self_attn.norm_k.weight", "attn1.norm_k.weight"),
                  ("cross_attn.norm_q.weight", "attn2.norm_q.weight"),
                  ("cross_attn.norm_k.weight", "attn2.norm_k.weight"))
_BLOCK_CROSS_NORM = (("norm3.weight", "norm2.weight"), ("norm3.bias", "norm2.bias"))


def _with_suffixes(pairs) -> list[tuple[str, str]]:
    return [(f"{a}.{s}", f"{b}.{s}") for a, b in pairs for s in ("weight", "bias")]


_TOP_LEVEL_KEYS = _with_suffixes(_TOP_LEVEL) + list(_TOP_LEVEL_TENSORS)
_BLOCK_REQUIRED_KEYS = _with_suffixes(_BLOCK_LINEARS) + list(_BLOCK_TENSORS)
_BLOCK_OPTIONAL_GROUPS = (_BLOCK_QK_NORM, _BLOCK_CROSS_NORM)
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def _match(state_dict: dict, source: int) -> tuple[dict, list[str], list[str]]:
    """Rename keys from one spelling (source = 0 official, 1 diffusers) to the other.

    Returns (renamed state dict, missing keys, unexpected keys), both lists sorted.
    """
    target = 1 - source
    top = {pair[source]: pair[target] for pair in _TOP_LEVEL_KEYS}
    block_required = {pair[source]: pair[target] for pair in _BLOCK_REQUIRED_KEYS}
    block_optional = [{pair[source]: pair[target] for pair in group} for group in _BLOCK_OPTIONAL_GROUPS]
    block_known = dict(block_required)
    for group in block_optional:
        block_known.update(group)

    renamed, unknown, block_suffixes = {}, [], {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        if key in top:
            renamed[top[key]] = tensor
        elif match and match.group(2) in block_known:
            index, suffix = int(match.group(1)), match.group(2)
            block_suffixes.setdefault(index, set()).add(suffix)
            renamed[f"blocks.{index}.{block_known[suffix]}"] = tensor
        else:
            unknown.append(key)

    missing = [key for key in top if key not in state_dict]
    num_blocks = max(block_suffixes, default=-1) + 1
    first = block_suffixes.get(0, set())
    expected_suffixes = set(block_required)
    for group in block_optional:
        if first & set(group):              # block 0 decides whether an optional group is present
            expected_suffixes |= set(group)
    for index in range(num_blocks):
        missing += [f"blocks.{index}.{s}" for s in sorted(expected_suffixes - block_suffixes.get(index, set()))]
        unknown += [f"blocks.{index}.{s}" for s in sorted(block_suffixes.get(index, set()) - expected_suffixes)]
    if num_blocks == 0:
        missing.append("blocks.0.*")
    return renamed, sorted(missing), sorted(unknown)


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"


def _rename(state_dict: dict, source: int) -> dict:
    """Rename strictly; raise CheckpointError listing missing and unexpected keys."""
    names = ("official", "diffusers")
    renamed, missing, unknown = _match(state_dict, source)
    if missing or unknown:
        _, target_missing, target_unknown = _match(state_dict, 1 - source)
        hint = (f"The state dict is already in {names[1 - source]} naming." if not target_missing + target_unknown
                else "Check that the weights are a Wan2.1 T2V transformer and that all shards were loaded.")
        raise CheckpointError(
            f"the state dict is not a complete Wan2.1 text-to-video DiT in {names[source]} naming: missing keys "
            f"{_listing(missing)}, unexpected keys {_listing(unknown)}. {hint}")
    return renamed


def diffusers_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers WanTransformer3DModel state dict to official Wan2.1 names (same tensors).

    Raises CheckpointError listing missing or unexpected keys.
    """
    return _rename(state_dict, 1)


def official_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Wan2.1 DiT state dict to diffusers WanTransformer3DModel names (same tensors).

    Raises CheckpointError listing missing or unexpected keys.
    """
    return _rename(state_dict, 0)


def _load_file(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} could not be read as safetensors ({err}); the file is damaged or "
                              f"incomplete: download it again.") from err


def _read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's weight_map (tensor name -> shard file name), validated."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{index_path} is not valid JSON ({err}); replace it with the original "
                              f"index file.") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no non-empty 'weight_map' object (tensor name -> shard file); "
                              f"replace it with the original index file.")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index_path} maps {name!r} to {shard!r}, which is not a .safetensors file "
                                  f"name in the same folder; replace it with the original index file.")
    return weight_map


def load_safetensors_state_dict(folder: str | Path, stem: str = "diffusion_pytorch_model",
                                device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read `{stem}.safetensors`, or the shards listed in `{stem}.safetensors.index.json`, from `folder`.

    Returns tensor name -> tensor (dtype as stored) on `device`. Raises CheckpointError naming the
    missing or malformed file when the folder holds neither form, both forms, a shard the index
    lists but the folder lacks, or shards that disagree with the index.
    """
    folder = Path(folder)
    single = folder / f"{stem}.safetensors"
    index_path = folder / f"{stem}.safetensors.index.json"
    if single.is_file() and index_path.is_file():
        raise CheckpointError(f"{folder} holds both {single.name} and {index_path.name}; it is unclear which "
                              f"weights to use. Keep only one of them.")
    if single.is_file():
        return _load_file(single, device)
    if not index_path.is_file():
        raise CheckpointError(f"{folder} has no DiT weights: expected {single.name} or {index_path.name} "
                              f"with its {stem}-0000i-of-0000n.safetensors shards. Download the full checkpoint.")

    weight_map = _read_weight_map(index_path)
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if not (folder / shard).is_file()]
    if absent:
        raise CheckpointError(f"{folder} lacks shard(s) {absent} listed in {index_path.name}; download the "
                              f"missing file(s).")
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors = _load_file(folder / shard, device)
        listed = {name for name, owner in weight_map.items() if owner == shard}
        if set(tensors) != listed:
            raise CheckpointError(
                f"{folder / shard} does not hold the tensors {index_path.name} assigns to it: missing "
                f"{sorted(listed - set(tensors))[:10]}, unlisted {sorted(set(tensors) - listed)[:10]}. "
                f"The shard or the index is from another checkpoint; download both again.")
        state_dict.update(tensors)
    return state_dict
