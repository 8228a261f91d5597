"""The umT5 text encoder Wan2.1 conditions on, loaded from either checkpoint layout.

The network is transformers' `UMT5EncoderModel`; the official release's own T5 state dict
(`models_t5_umt5-xxl-enc-bf16.pth`, Wan's `wan/modules/t5.py` module names) is renamed onto it key by key.
Sizes are read from the weights' shapes, so tiny test checkpoints load the same way as umT5-XXL
(d_model 4096, d_ff 10240, 64 heads of 64, 24 layers, vocab 256384, 32 buckets, max distance 128).
Both loaders give a model whose every weight is in the requested dtype (Wan runs umT5 wholly in bf16).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from ..errors import CheckpointError
from .prompt_clean import clean_prompt

OFFICIAL_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER_DIR = "google/umt5-xxl"
DIFFUSERS_TEXT_ENCODER_DIR = "text_encoder"
DIFFUSERS_TOKENIZER_DIR = "tokenizer"
TEXT_LEN = 512                    # Wan2.1's text length: prompts are padded / truncated to 512 tokens
RELATIVE_MAX_DISTANCE = 128       # Wan's T5RelativeEmbedding default; not stored in the weights
LAYER_NORM_EPS = 1e-6

_OFFICIAL_BLOCK_KEYS = {          # Wan T5 block sub-key -> transformers UMT5Block sub-key
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_OFFICIAL_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight")


def load_pth_state_dict(path: Path, what: str, remedy: str) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict (CPU tensors, memory-mapped when the file allows) or raise CheckpointError.

    `what` names the file's role and `remedy` says what to do; both go into the error message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing {path} ({what}). {remedy}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:   # files in the pre-zip format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"cannot read {path} ({what}): {err}. {remedy}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} ({what}) is not a state dict of tensors. {remedy}")
    return state


def official_t5_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's T5 encoder state dict to `UMT5EncoderModel` keys (same tensors, no copies).

    Every key must be one Wan's umT5 encoder has; the embedding is given under both of transformers'
    tied names (`shared.weight`, `encoder.embed_tokens.weight`).
    """
    renamed, unknown = {}, []
    for key, tensor in state.items():
        block = _OFFICIAL_BLOCK_KEY.fullmatch(key)
        if key == "token_embedding.weight":
            renamed.update({name: tensor for name in _EMBEDDING_KEYS})
        elif key == "norm.weight":
            renamed["encoder.final_layer_norm.weight"] = tensor
        elif block and block.group(2) in _OFFICIAL_BLOCK_KEYS:
            renamed[f"encoder.block.{block.group(1)}.{_OFFICIAL_BLOCK_KEYS[block.group(2)]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"unexpected keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''} in a Wan umT5 encoder state dict "
            f"(expected token_embedding.weight, blocks.N.{{{', '.join(_OFFICIAL_BLOCK_KEYS)}}}, norm.weight). "
            f"A T5 with one shared position bias, or a full T5 with a decoder, is not Wan's umT5 encoder.")
    return renamed


def umt5_config_from_official(state: dict[str, torch.Tensor]) -> UMT5Config:
    """UMT5Config for Wan's T5 encoder state dict, sizes read from the tensor shapes."""
    try:
        vocab_size, d_model = state["token_embedding.weight"].shape
        num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        inner_dim = state["blocks.0.attn.q.weight"].shape[0]
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"a Wan umT5 encoder state dict needs {err} with the usual shape "
                              f"(token_embedding [vocab, dim], blocks.0.* ...)") from err
    num_layers = len({int(m.group(1)) for key in state if (m := _OFFICIAL_BLOCK_KEY.fullmatch(key))})
    if inner_dim % num_heads:
        raise CheckpointError(f"attention width {inner_dim} is not a multiple of the {num_heads} heads "
                              f"the position bias has: the T5 state dict is malformed")
    return UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=inner_dim // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_decoder_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=RELATIVE_MAX_DISTANCE, layer_norm_epsilon=LAYER_NORM_EPS,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0)


def _read_transformers_weights(folder: Path) -> dict[str, torch.Tensor]:
    """State dict of a transformers model folder: model.safetensors or the shards its index lists."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(load_file(folder / shard))
            return state
        return load_file(folder / "model.safetensors")
    except (OSError, KeyError, ValueError, SafetensorError) as err:
        raise CheckpointError(
            f"cannot read the text encoder weights in {folder} ({err}): a diffusers text_encoder/ folder holds "
            f"config.json and model.safetensors (or model-*-of-*.safetensors shards with "
            f"model.safetensors.index.json). Download the folder again.") from err


def _build_umt5(config: UMT5Config, state: dict[str, torch.Tensor], source: Path,
                device: torch.device | str, dtype: torch.dtype) -> UMT5EncoderModel:
    """UMT5EncoderModel holding exactly `state` (transformers names), every weight in `dtype` on `device`."""
    embedding = state.get("encoder.embed_tokens.weight", state.get("shared.weight"))
    if embedding is None:
        raise CheckpointError(f"the text encoder weights from {source} have no token embedding "
                              f"(shared.weight / encoder.embed_tokens.weight). Download the file again.")
    embedding = embedding.to(dtype)
    state = {key: tensor.to(dtype) for key, tensor in state.items() if key not in _EMBEDDING_KEYS}
    state.update({name: embedding for name in _EMBEDDING_KEYS})
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"the text encoder weights from {source} do not fit a umT5 encoder "
                              f"({err}). Check that the file belongs to a Wan2.1 checkpoint.") from err
    model.set_input_embeddings(model.shared)      # one embedding module, as transformers ties them
    return model.to(device=device).eval().requires_grad_(False)     # weights are already in `dtype`


def _check_sentencepiece_model(path: Path) -> None:
    """Raise CheckpointError unless `path` is a SentencePiece model (transformers would otherwise fall
    back to other formats and suggest installing tiktoken)."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a SentencePiece model ({err}): the file is damaged or was not "
                              f"downloaded completely (a Git LFS pointer?). Download the tokenizer folder "
                              f"again.") from err


def _load_tokenizer(folder: Path, layout: str):
    if not folder.is_dir():
        raise CheckpointError(f"missing tokenizer folder {folder} (the {layout} layout keeps the umT5 tokenizer "
                              f"there). Download the complete checkpoint, or pass tokenizer_dir=.")
    spiece = folder / "spiece.model"
    if spiece.is_file() and not (folder / "tokenizer.json").is_file():
        _check_sentencepiece_model(spiece)
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {err}. It should hold spiece.model "
                              f"and/or tokenizer.json with tokenizer_config.json.") from err


class TextEncoder:
    """umT5 encoder + tokenizer: prompts -> Wan's text context.

    Attributes: `model` (UMT5EncoderModel, eval, no grad), `tokenizer` (transformers T5 tokenizer),
    `text_len` (tokens per prompt, 512 for Wan2.1).
    """

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int = TEXT_LEN):
        if text_len < 1:
            raise ValueError(f"text_len must be at least 1, got {text_len}")
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_official(cls, ckpt_dir: str | Path, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, *, text_len: int = TEXT_LEN,
                      tokenizer_dir: str | Path | None = None) -> TextEncoder:
        """Load `ckpt_dir/models_t5_umt5-xxl-enc-bf16.pth` and `ckpt_dir/google/umt5-xxl/` (official layout)."""
        ckpt_dir = Path(ckpt_dir)
        path = ckpt_dir / OFFICIAL_T5_FILE
        state = load_pth_state_dict(
            path, "Wan2.1 umT5-XXL text encoder weights, official layout",
            "Download the complete official Wan2.1-T2V checkpoint folder, or use a diffusers-layout folder.")
        tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else ckpt_dir / OFFICIAL_TOKENIZER_DIR,
                                    "official")
        config = umt5_config_from_official(state)
        model = _build_umt5(config, official_t5_to_transformers(state), path, device, dtype)
        return cls(model, tokenizer, text_len)

    @classmethod
    def from_diffusers(cls, folder: str | Path, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, *, text_len: int = TEXT_LEN,
                       tokenizer_dir: str | Path | None = None) -> TextEncoder:
        """Load `folder/text_encoder/` (UMT5EncoderModel config.json + safetensors) and `folder/tokenizer/`."""
        folder = Path(folder)
        encoder_dir = folder / DIFFUSERS_TEXT_ENCODER_DIR
        config_path = encoder_dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"missing {config_path} (the diffusers layout's umT5 text encoder config). "
                                  f"Download the complete diffusers Wan2.1 folder, or use the official layout.")
        try:
            config = UMT5Config.from_json_file(config_path)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{config_path} is not a valid transformers config: {err}") from err
        if config.model_type != "umt5":
            raise CheckpointError(f"{config_path} describes a {config.model_type!r} model; Wan2.1 uses umt5")
        config.is_encoder_decoder, config.use_cache = False, False
        tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else folder / DIFFUSERS_TOKENIZER_DIR,
                                    "diffusers")
        model = _build_umt5(config, _read_transformers_weights(encoder_dir), encoder_dir, device, dtype)
        return cls(model, tokenizer, text_len)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def token_ids(self, prompt: str) -> list[int]:
        """The ids the encoder sees for `prompt` (cleaned, truncated to text_len, ending in </s>), no padding."""
        return self.tokenizer(clean_prompt(prompt), truncation=True, max_length=self.text_len,
                              add_special_tokens=True).input_ids

    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Text context [B, text_len, d_model] in the model's dtype, computed on `device` (default: the
        device the weights are on) and returned there.

        With weights elsewhere (the CPU, under --offload) the encoder is streamed to `device`
        (`streamed_to`): the tokens are embedded on the weights' device (a row lookup, exact anywhere),
        then each block's weights are copied to `device` for its forward only, so `device` holds one
        block at a time (umT5-XXL: 0.47 GB of its 11.4 GB) and computes what the whole encoder there would.
        Positions past each prompt's token count (its ids + </s>) are exactly zero, as in Wan and diffusers.
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
            raise TypeError("encode() takes a non-empty list of prompt strings")
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                               truncation=True, add_special_tokens=True, return_attention_mask=True,
                               return_tensors="pt")
        vocab_size = self.model.config.vocab_size
        if int(batch.input_ids.max()) >= vocab_size:
            raise CheckpointError(f"the tokenizer gave token id {int(batch.input_ids.max())} but the text encoder "
                                  f"embeds only {vocab_size} tokens: the tokenizer folder does not belong to this "
                                  f"checkpoint")
        device = self.device if device is None else torch.device(device)
        mask = batch.attention_mask.to(device)
        if device == self.device:
            hidden = self.model(input_ids=batch.input_ids.to(device), attention_mask=mask).last_hidden_state
        else:
            embedded = self.model.get_input_embeddings()(batch.input_ids.to(self.device)).to(device)
            with streamed_to(self.model, device):
                hidden = self.model(inputs_embeds=embedded, attention_mask=mask).last_hidden_state
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, 0)


def streamed_modules(model: UMT5EncoderModel) -> list[torch.nn.Module]:
    """The modules `streamed_to` moves one at a time: every encoder block, then the final layer norm.
    Together with the token embedding (used where it is) they hold every weight of the model."""
    modules = [*model.encoder.block, model.encoder.final_layer_norm]
    covered = {id(t) for module in modules for t in (*module.parameters(), *module.buffers())}
    covered |= {id(t) for t in model.get_input_embeddings().parameters()}
    missed = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if id(t) not in covered]
    if missed:
        raise ValueError(f"cannot stream this text encoder to another device: {missed[:3]} belong to no block")
    return modules


@contextmanager
def streamed_to(model: UMT5EncoderModel, device: torch.device):
    """Within the block, each of `streamed_modules(model)` runs on `device`: a forward pre-hook puts
    copies of its parameters and buffers on `device` in their places, and the forward hook puts the
    originals back (nothing is copied back; the copies are freed). The module objects stay the same."""
    originals: dict[int, list[tuple[dict, str, torch.Tensor]]] = {}

    def to_device(module, args):
        slots = [(table, name, tensor) for sub in module.modules()
                 for table in (sub._parameters, sub._buffers) for name, tensor in table.items()
                 if tensor is not None]
        originals[id(module)] = slots
        for table, name, tensor in slots:
            copy = tensor.detach().to(device, non_blocking=True)
            table[name] = torch.nn.Parameter(copy, requires_grad=False) if isinstance(tensor, torch.nn.Parameter) \
                else copy

    def back(module, args, output):
        _put_back(originals.pop(id(module)))

    handles = []
    try:
        for module in streamed_modules(model):
            handles += [module.register_forward_pre_hook(to_device), module.register_forward_hook(back)]
        yield
    finally:
        for handle in handles:
            handle.remove()
        for slots in originals.values():          # a forward that raised leaves its module's copies
            _put_back(slots)


def _put_back(slots: list[tuple[dict, str, torch.Tensor]]) -> None:
    for table, name, tensor in slots:
        table[name] = tensor
