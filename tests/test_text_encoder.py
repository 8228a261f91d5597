"""TextEncoder: official and diffusers layouts, against a plain-PyTorch oracle of Wan's T5 encoder."""
from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from numina_engine.engine.prompt_clean import clean_prompt
from numina_engine.engine.text_encoder import TextEncoder
from numina_engine.errors import CheckpointError
from full_stack import full_stack

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_ASSET = ROOT / "tests" / "assets" / "tiny-wan" / "tokenizer"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VOCAB, DIM, HEADS, HEAD_DIM, FFN, LAYERS, BUCKETS = 1031, 32, 4, 6, 40, 3, 32   # attention width 24 != DIM
TEXT_LEN = 48
PROMPTS = [
    "Three   dogs play in a park &amp;amp; two cats watch.",
    "",
    "A xylophone, a zeppelin and seventeen quizzical wombats juggle marmalade jars beneath a kaleidoscopic "
    "aurora while forty iridescent hummingbirds hover",      # longer than TEXT_LEN tokens: truncated
]


def official_t5_state(seed: int) -> dict[str, torch.Tensor]:
    """Random Wan-T5-encoder state dict with the official key names, stored in bf16 like the release."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=gen)).to(torch.bfloat16)

    state = {"token_embedding.weight": randn(VOCAB, DIM)}
    for i in range(LAYERS):
        p = f"blocks.{i}."
        state[p + "norm1.weight"] = randn(DIM, std=0.2, mean=1.0)
        for name in "qkv":
            state[p + f"attn.{name}.weight"] = randn(HEADS * HEAD_DIM, DIM, std=DIM ** -0.5)
        state[p + "attn.o.weight"] = randn(DIM, HEADS * HEAD_DIM, std=(HEADS * HEAD_DIM) ** -0.5)
        state[p + "norm2.weight"] = randn(DIM, std=0.2, mean=1.0)
        state[p + "ffn.gate.0.weight"] = randn(FFN, DIM, std=DIM ** -0.5)
        state[p + "ffn.fc1.weight"] = randn(FFN, DIM, std=DIM ** -0.5)
        state[p + "ffn.fc2.weight"] = randn(DIM, FFN, std=FFN ** -0.5)
        state[p + "pos_embedding.embedding.weight"] = randn(BUCKETS, HEADS, std=0.5)
    state["norm.weight"] = randn(DIM, std=0.2, mean=1.0)
    return state


# ---- the oracle: Wan's T5 encoder (wan/modules/t5.py semantics) in plain PyTorch, fp32 -------------------

def oracle_relative_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of relative position rel = key - query (int64, any shape)."""
    half = num_buckets // 2
    max_exact = half // 2
    distance = rel.abs()
    scaled = torch.log(distance.clamp(min=max_exact).double() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + torch.floor(scaled * (half - max_exact))).long().clamp(max=half - 1)
    return (rel > 0).long() * half + torch.where(distance < max_exact, distance, far)


def oracle_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def oracle_encoder(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan T5 encoder forward: ids/mask int64 [B, L] -> fp32 [B, L, DIM] (padding not zeroed)."""
    w = {k: v.float() for k, v in state.items()}
    batch, length = ids.shape
    x = w["token_embedding.weight"][ids]
    positions = torch.arange(length)
    buckets = oracle_relative_bucket(positions[None, :] - positions[:, None], BUCKETS)
    key_bias = torch.zeros(batch, 1, 1, length).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    for i in range(LAYERS):
        p = f"blocks.{i}."
        h = oracle_rms_norm(x, w[p + "norm1.weight"])
        q, k, v = (F.linear(h, w[p + f"attn.{n}.weight"]).view(batch, length, HEADS, HEAD_DIM) for n in "qkv")
        position_bias = w[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)     # [H, Lq, Lk]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) + position_bias + key_bias              # no 1/sqrt(d)
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, length, -1)
        x = x + F.linear(attended, w[p + "attn.o.weight"])
        h = oracle_rms_norm(x, w[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, w[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(gate * F.linear(h, w[p + "ffn.fc1.weight"]), w[p + "ffn.fc2.weight"])
    return oracle_rms_norm(x, w["norm.weight"])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    torch.save(official_t5_state(seed=7), folder / T5_FILE)
    shutil.copytree(TOKENIZER_ASSET, folder / "google" / "umt5-xxl")
    return folder


@pytest.fixture(scope="module")
def official_encoder(official_dir) -> TextEncoder:
    return TextEncoder.from_official(official_dir, device="cpu", dtype=torch.float32, text_len=TEXT_LEN)


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory) -> Path:
    """A diffusers folder written by transformers itself, weights renamed from the official ones here."""
    from transformers import UMT5Config, UMT5EncoderModel

    official = official_t5_state(seed=7)
    renamed = {"shared.weight": official["token_embedding.weight"],
               "encoder.final_layer_norm.weight": official["norm.weight"]}
    wan_to_hf = [("norm1", "layer.0.layer_norm"), ("attn.q", "layer.0.SelfAttention.q"),
                 ("attn.k", "layer.0.SelfAttention.k"), ("attn.v", "layer.0.SelfAttention.v"),
                 ("attn.o", "layer.0.SelfAttention.o"),
                 ("pos_embedding.embedding", "layer.0.SelfAttention.relative_attention_bias"),
                 ("norm2", "layer.1.layer_norm"), ("ffn.gate.0", "layer.1.DenseReluDense.wi_0"),
                 ("ffn.fc1", "layer.1.DenseReluDense.wi_1"), ("ffn.fc2", "layer.1.DenseReluDense.wo")]
    for i in range(LAYERS):
        for wan, hf in wan_to_hf:
            renamed[f"encoder.block.{i}.{hf}.weight"] = official[f"blocks.{i}.{wan}.weight"]
    config = UMT5Config(vocab_size=VOCAB, d_model=DIM, d_kv=HEAD_DIM, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
                        relative_attention_num_buckets=BUCKETS, feed_forward_proj="gated-gelu",
                        is_encoder_decoder=False, use_cache=False)
    model = UMT5EncoderModel(config).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert unexpected == [] and set(missing) <= {"encoder.embed_tokens.weight"}
    assert torch.equal(model.get_input_embeddings().weight, renamed["shared.weight"])
    folder = tmp_path_factory.mktemp("diffusers")
    model.save_pretrained(folder / "text_encoder")
    shutil.copytree(TOKENIZER_ASSET, folder / "tokenizer")
    return folder


# ---- tests ---------------------------------------------------------------------------------------------

def test_oracle_buckets_match_hand_computed_t5_values():
    rel = torch.tensor([0, -1, 1, -7, 7, -8, 8, -20, 20, -127, 200])
    # 32 buckets, 16 per direction, 8 exact: 8 + floor(log(d/8)/log(16) * 8) beyond
    assert oracle_relative_bucket(rel, 32).tolist() == [0, 1, 17, 7, 23, 8, 24, 10, 26, 15, 31]


def test_official_layout_matches_wan_t5_oracle(official_dir, official_encoder):
    context = official_encoder.encode(PROMPTS)
    assert context.shape == (len(PROMPTS), TEXT_LEN, DIM) and context.dtype == torch.float32
    tokens = official_encoder.tokenizer([clean_prompt(p) for p in PROMPTS], padding="max_length",
                                        max_length=TEXT_LEN, truncation=True, return_tensors="pt")
    expected = oracle_encoder(official_t5_state(seed=7), tokens.input_ids, tokens.attention_mask)
    expected = expected * tokens.attention_mask[..., None]
    assert relative_error(context, expected) < 1e-5
    for row, prompt in enumerate(PROMPTS):       # each prompt on its own, too (short ones are small in norm)
        valid = len(official_encoder.token_ids(prompt))
        assert relative_error(context[row, :valid], expected[row, :valid]) < 1e-5


def test_encode_zeroes_positions_past_each_prompt(official_encoder):
    context = official_encoder.encode(PROMPTS)
    lengths = [len(official_encoder.token_ids(p)) for p in PROMPTS]
    assert lengths[1] == 1 and lengths[2] == TEXT_LEN and lengths[0] < TEXT_LEN
    for row, length in enumerate(lengths):
        assert torch.all(context[row, length:] == 0)
        assert torch.all(context[row, :length].abs().sum(-1) > 0)


def test_token_ids_are_what_the_encoder_sees(official_encoder):
    ids = official_encoder.token_ids(PROMPTS[0])
    assert ids[-1] == official_encoder.tokenizer.eos_token_id and 0 not in ids
    assert ids == official_encoder.token_ids("Three dogs play in a park & two cats watch.")
    batch = official_encoder.tokenizer([clean_prompt(PROMPTS[0])], padding="max_length", max_length=TEXT_LEN,
                                       truncation=True).input_ids[0]
    assert batch[:len(ids)] == ids and set(batch[len(ids):]) == {0}
    # rows do not interact: a prompt's context does not depend on the other prompts in the batch
    alone = official_encoder.encode([PROMPTS[0]])[0]
    assert torch.allclose(official_encoder.encode(PROMPTS)[0], alone, rtol=1e-5, atol=1e-6)


def test_diffusers_layout_loads_the_same_weights_as_official(official_encoder, diffusers_dir):
    loaded = TextEncoder.from_diffusers(diffusers_dir, device="cpu", dtype=torch.float32, text_len=TEXT_LEN)
    official_params = dict(official_encoder.model.named_parameters())
    diffusers_params = dict(loaded.model.named_parameters())
    assert official_params.keys() == diffusers_params.keys()
    for name, tensor in official_params.items():
        assert diffusers_params[name].dtype == torch.float32
        assert torch.equal(diffusers_params[name], tensor), name
    assert loaded.model.encoder.embed_tokens is loaded.model.shared
    assert torch.equal(loaded.encode(PROMPTS), official_encoder.encode(PROMPTS))


def test_bf16_load_casts_every_weight(official_dir):
    encoder = TextEncoder.from_official(official_dir, dtype=torch.bfloat16, text_len=TEXT_LEN)
    assert {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    assert encoder.encode(PROMPTS[:1]).dtype == torch.bfloat16


def test_missing_or_malformed_files_raise_checkpoint_error(tmp_path, official_dir):
    with pytest.raises(CheckpointError, match=T5_FILE):
        TextEncoder.from_official(tmp_path)
    shutil.copyfile(official_dir / T5_FILE, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match="google/umt5-xxl"):
        TextEncoder.from_official(tmp_path)
    shutil.copytree(TOKENIZER_ASSET, tmp_path / "google" / "umt5-xxl")
    (tmp_path / T5_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        TextEncoder.from_official(tmp_path)
    state = official_t5_state(seed=1)
    state["blocks.0.attn.extra.weight"] = state["norm.weight"]
    torch.save(state, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match="blocks.0.attn.extra.weight"):
        TextEncoder.from_official(tmp_path)
    del state["blocks.0.attn.extra.weight"], state["blocks.2.ffn.fc2.weight"]
    torch.save(state, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match="encoder.block.2.layer.1.DenseReluDense.wo.weight"):
        TextEncoder.from_official(tmp_path)
    with pytest.raises(CheckpointError, match="text_encoder/config.json"):
        TextEncoder.from_diffusers(tmp_path)


def test_tokenizer_larger_than_embedding_is_rejected(tmp_path):
    state = official_t5_state(seed=2)
    state["token_embedding.weight"] = state["token_embedding.weight"][:500]
    torch.save(state, tmp_path / T5_FILE)
    encoder = TextEncoder.from_official(tmp_path, tokenizer_dir=TOKENIZER_ASSET)
    assert max(encoder.token_ids(PROMPTS[2])) >= 500
    with pytest.raises(CheckpointError, match="does not belong"):
        encoder.encode(PROMPTS)


def test_clean_prompt_matches_diffusers_wan_pipeline():
    pipeline_wan = full_stack("diffusers.pipelines.wan.pipeline_wan")
    samples = ["  Three\tdogs\n\n play  ", "cats &amp;amp; dogs &lt;3", "\u201ccurly\u201d quotes \u2018x\u2019",
               "mojibake: cafÃ©", "full\u3000width\uff21\uff22", "ﬁne ligature", "", "\u00a0nbsp\u2003em\u2009",
               "中文提示词，色调艳丽"]
    for text in samples:
        assert clean_prompt(text) == pipeline_wan.prompt_clean(text), text


def test_embedded_tokenizer_is_t5_style_and_equals_sentencepiece():
    import sentencepiece
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_ASSET, local_files_only=True)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER_ASSET / "spiece.model"))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert 1000 <= len(tokenizer) == processor.get_piece_size() <= 2000
    for text in PROMPTS + ["Seven striped zebras gallop, 12 owls watch!", "caf\u00e9 \u4e2d\u6587 \u2460", "a  b\t c"]:
        assert tokenizer(text).input_ids == processor.encode(text) + [1], text
    assert sum(f.stat().st_size for f in TOKENIZER_ASSET.iterdir()) < 1_000_000


def test_tiny_tokenizer_training_is_deterministic():
    spec = importlib.util.spec_from_file_location("make_tiny_tokenizer", ROOT / "tools" / "make_tiny_tokenizer.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    corpus = tool.generate_corpus()
    assert corpus == tool.generate_corpus() and len(set(corpus)) > 10_000
    assert tool.train_sentencepiece(corpus, 1024) == tool.train_sentencepiece(list(corpus), 1024)


# ---- streamed encoding (--offload: weights on the CPU, computed on the GPU block by block) -------------

def test_streaming_runs_every_block_on_the_target_device_and_restores_the_weights(official_encoder):
    """`meta` stands in for the GPU: a weight left on the CPU would meet meta activations and raise. (The
    whole encode cannot run on meta: the attention mask is read back to the host.)"""
    from numina_engine.engine.text_encoder import streamed_modules, streamed_to

    model = official_encoder.model
    before = {name: (t.device, t.data_ptr()) for name, t in model.state_dict().items()}
    seen = []
    hidden = torch.randn(2, 7, DIM, device="meta")
    with torch.no_grad(), streamed_to(model, torch.device("meta")):
        for module in streamed_modules(model):
            handle = module.register_forward_pre_hook(     # runs after the streaming hook: sees the copies
                lambda module, args: seen.append({t.device.type for t in module.state_dict().values()}))
            out = module(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
            handle.remove()
    assert hidden.device.type == "meta" and hidden.shape == (2, 7, DIM)
    assert seen == [{"meta"}] * (LAYERS + 1)
    after = {name: (t.device, t.data_ptr()) for name, t in model.state_dict().items()}
    assert after == before and official_encoder.device.type == "cpu"


def test_embedding_outside_the_encoder_equals_the_plain_encoding(official_encoder):
    """The streamed path feeds the embedded tokens (inputs_embeds) and streams the blocks; on one device
    the same forward must give the same context, bit for bit."""
    from numina_engine.engine.text_encoder import streamed_to

    model = official_encoder.model
    batch = official_encoder.tokenizer(PROMPTS, padding="max_length", max_length=TEXT_LEN, truncation=True,
                                       return_tensors="pt")
    with torch.no_grad():
        plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        with streamed_to(model, torch.device("cpu")):
            streamed = model(inputs_embeds=model.get_input_embeddings()(batch.input_ids),
                             attention_mask=batch.attention_mask).last_hidden_state
    assert torch.equal(plain, streamed) and plain.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_encoding_on_the_gpu_equals_the_encoder_on_the_gpu(official_dir):
    cpu_encoder = TextEncoder.from_official(official_dir, device="cpu", dtype=torch.bfloat16, text_len=TEXT_LEN)
    gpu_encoder = TextEncoder.from_official(official_dir, device="cuda", dtype=torch.bfloat16, text_len=TEXT_LEN)
    streamed = cpu_encoder.encode(PROMPTS, device="cuda")
    assert streamed.device.type == "cuda" and cpu_encoder.device.type == "cpu"
    assert torch.equal(streamed, gpu_encoder.encode(PROMPTS))
