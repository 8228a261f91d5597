"""Train the embedded demo model: a tiny Wan2.1-architecture text-to-video model of the counting world.

The model is this engine's own `WanDiT` (pixel space: it denoises 32x32 RGB frames directly, patch
1x2x2, so a 5-frame clip is a 5x16x16 token grid) with a tiny umT5 text encoder trained jointly and a
sentencepiece tokenizer of the world's vocabulary (tools/make_tiny_tokenizer.py --world). Training is
Wan's flow matching: x_t = (1 - s) x_0 + s e, target velocity e - x_0, timestep 1000 s, with s drawn
uniformly and shifted like the sampler (s' = k s / (1 + (k - 1) s)). Captions are dropped for 10% of
the samples (half of them to "", half to Wan's default negative prompt) so that classifier-free
guidance works with either. Scenes come from `numina_engine.demo.world` with seed TRAIN_SEED; the
benchmark (bench/countbench_demo.py) uses another seed, so its prompts are unseen.

    python tools/train_demo_model.py --out /tmp/counting-world [--steps N] [--batch 256]

Writes a diffusers-layout checkpoint folder (transformer/, text_encoder/, tokenizer/, vae/ = pixel space,
scheduler/, model_index.json, numina_engine.json) with an EMA of the weights in float16, plus
training_log.json (loss curve, steps, throughput, device, date) for the model card. Meant for a GPU;
--device cpu with a few steps is a smoke test.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from numina_engine.demo.world import WorldConfig, captions, render, sample_scenes
from numina_engine.engine.config import WanConfig
from numina_engine.engine.model import WanDiT
from numina_engine.engine.settings import WAN_NEGATIVE_PROMPT
from numina_engine.engine.weights import official_to_diffusers

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "numina_engine" / "assets" / "counting-world" / "tokenizer"
TRAIN_SEED = 1
WORLD = WorldConfig()
DIT = WanConfig(dim=192, ffn_dim=768, num_heads=4, num_layers=8, in_dim=3, out_dim=3, text_dim=128, freq_dim=128)
TEXT = dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
            relative_attention_max_distance=128, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0)
SHIFT = 3.0
CAPTION_DROPOUT = 0.1          # fraction of captions replaced by "" or Wan's negative prompt
WARMUP_STEPS = 200
FINAL_LR_FRACTION = 0.1        # cosine decay to this fraction of --lr
STEPS_DEFAULT = 20
NOTE = ("embedded demo model: a tiny Wan2.1-architecture model trained on a synthetic counting world "
        "(1-6 apples, trees, rings, boxes, gems and flowers drifting over a dark background, 32x32 px, "
        "5 frames; each noun names one look). It knows only that world's words; see "
        "numina_engine/assets/counting-world/MODEL_CARD.md.")
# NUMINA's settings scaled from Wan2.1-1.3B (30 blocks, 30x52 tokens a frame, 50 steps) to this model
# (8 blocks, 16x16 tokens, objects ~4 tokens across: radius 2 tokens, 20 steps). The reference step/layer,
# the focus settings and the instance rule (an engine-mode choice: authors mode keeps MeanShift) were chosen
# on validation-seed scenes by bench/layout_settings.py (highest instance F1, docs/results/layout_settings_cpu.json)
# and checked end to end by bench/layout_settings_e2e.py (docs/results/layout_settings_e2e_cpu.json).
SIDECAR = dict(width=WORLD.size, height=WORLD.size, frames=WORLD.frames, steps=STEPS_DEFAULT, guide_scale=5.0,
               shift=SHIFT, note=NOTE, counter="counting-world",
               numina=dict(reference_step=10, reference_layer=4, cross_attn_peak_ratio=0.5, dbscan_eps=1.5,
                           dbscan_min_samples=5, circle_radius=2, placement_grid_step=1, modulation_center=10.0,
                           easycache_warmup=4, layout_instances="focus_clusters"))
SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "solver_order": 2,
             "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": SHIFT,
             "solver_type": "bh2", "lower_order_final": True, "predict_x0": True}
MODEL_INDEX = {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
               "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
               "vae": ["numina_engine", "PixelSpace"], "scheduler": ["diffusers", "UniPCMultistepScheduler"]}


class CaptionBank:
    """Token ids of every training caption, padded to one length, on the GPU.

    ids, mask: int64 [num_scenes * variants, length]; row = variant * num_scenes + scene.
    """

    def __init__(self, tokenizer, texts: list[str], length: int, device: torch.device):
        batch = tokenizer(texts, padding="max_length", max_length=length, truncation=False, return_tensors="pt")
        self.ids = batch.input_ids.to(device)
        self.mask = batch.attention_mask.to(device)


def token_length(tokenizer, texts: list[str]) -> int:
    return max(len(ids) for ids in tokenizer(texts).input_ids)


def encode(text_encoder, ids: torch.Tensor, mask: torch.Tensor, text_len: int) -> torch.Tensor:
    """Context [B, text_len, d_model] as the engine builds it: padding positions exactly zero."""
    hidden = text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.masked_fill(mask.unsqueeze(-1) == 0, 0)
    return F.pad(hidden, (0, 0, 0, text_len - hidden.shape[1]))


def shifted(sigma: torch.Tensor) -> torch.Tensor:
    return SHIFT * sigma / (1 + (SHIFT - 1) * sigma)


def write_checkpoint(out: Path, dit: WanDiT, text_encoder, tokenizer_dir: Path) -> None:
    """diffusers-layout folder with float16 weights (the loader casts them to the run's dtype)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "transformer").mkdir(parents=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in official_to_diffusers(dit.state_dict()).items()}
    save_file(state, out / "transformer" / "diffusion_pytorch_model.safetensors")
    write_json(out / "transformer" / "config.json", DIT.to_diffusers_json())
    text_encoder.to(torch.float16).save_pretrained(out / "text_encoder")
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    write_json(out / "vae" / "config.json", {"_class_name": "PixelSpace"})
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER)
    write_json(out / "model_index.json", MODEL_INDEX)
    write_json(out / "numina_engine.json", SIDECAR)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (replaced)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=200_000, help="distinct training scenes")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (a smoke test)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT's training forward")
    args = parser.parse_args()
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    device = torch.device(args.device)
    torch.manual_seed(TRAIN_SEED)
    torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True)
    scenes = sample_scenes(args.scenes, seed=TRAIN_SEED, config=WORLD)
    variants = [captions(scenes, seed=TRAIN_SEED * 1000 + v) for v in range(2)]
    unconditional = ["", WAN_NEGATIVE_PROMPT]
    # Every caption fits (no truncation); padding past a caption is masked and zeroed like the engine's.
    length = token_length(tokenizer, variants[0] + variants[1] + unconditional)
    bank = CaptionBank(tokenizer, variants[0] + variants[1], length, device)
    empty = CaptionBank(tokenizer, unconditional, length, device)
    prepared_s = time.perf_counter() - started

    dit = WanDiT(DIT).to(device).train()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT)).to(device).train()
    forward = torch.compile(dit) if args.compile else dit
    params = list(dit.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * (
        FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * s / args.steps))))
    ema = [p.detach().clone() for p in params]
    generator = torch.Generator(device).manual_seed(TRAIN_SEED)
    picker = torch.Generator().manual_seed(TRAIN_SEED)             # scene indices, on the CPU like the scenes

    log, window, train_start = [], [], time.perf_counter()
    for step in range(args.steps):
        index = torch.randint(0, args.scenes, (args.batch,), generator=picker)
        variant = torch.randint(0, 2, (args.batch,), device=device, generator=generator)
        rows = variant * args.scenes + index.to(device)
        ids, mask = bank.ids[rows], bank.mask[rows]
        drop = torch.rand(args.batch, device=device, generator=generator) < CAPTION_DROPOUT
        which = torch.randint(0, 2, (args.batch,), device=device, generator=generator)
        ids = torch.where(drop[:, None], empty.ids[which], ids)
        mask = torch.where(drop[:, None], empty.mask[which], mask)

        clean = render(scenes.subset(index), WORLD, device=device)                     # [B, 3, F, H, W]
        noise = torch.randn(clean.shape, device=device, generator=generator)
        sigma = shifted(torch.rand(args.batch, device=device, generator=generator)).view(-1, 1, 1, 1, 1)
        noisy = (1 - sigma) * clean + sigma * noise
        with torch.autocast(device.type, dtype=torch.bfloat16):
            context = encode(text_encoder, ids, mask, DIT.text_len)
            flow = forward(noisy, sigma.flatten() * 1000, context)
        loss = F.mse_loss(flow.float(), noise - clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - args.ema)
        window.append(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = torch.stack(window).mean().item()
            window = []
            elapsed = time.perf_counter() - train_start
            log.append({"step": step + 1, "loss": round(mean, 5), "seconds": round(elapsed, 1)})
            print(f"step {step + 1}/{args.steps} loss {mean:.4f} ({elapsed:.0f} s)", flush=True)

    train_s = time.perf_counter() - train_start
    with torch.no_grad():
        for param, average in zip(params, ema):
            param.copy_(average)
    write_checkpoint(args.out, dit.eval(), text_encoder.eval(), TOKENIZER)
    write_json(args.out.parent / "training_log.json", {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "steps": args.steps, "batch": args.batch, "scenes": args.scenes,
        "lr": args.lr, "ema": args.ema, "compiled": args.compile, "train_seed": TRAIN_SEED, "caption_tokens": length,
        "dit_parameters": sum(p.numel() for p in dit.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "prepare_s": round(prepared_s, 1), "train_s": round(train_s, 1),
        "samples_per_s": round(args.steps * args.batch / train_s, 1), "loss_curve": log})
    print(f"wrote {args.out}; trained {args.steps} steps in {train_s:.0f} s")


if __name__ == "__main__":
    main()
