"""Write the demo model's card (MODEL_CARD.md) and loss curve (loss_curve.png) from its training log.

    python tools/model_card.py --log training_log.json --model numina_engine/assets/counting-world

The log is what tools/train_demo_model.py writes beside the checkpoint folder; the architecture and
schedule constants come from that script. The card states the data, sizes, steps, loss curve, date,
device and how to retrain. Pillow only (no plotting library).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from train_demo_model import CAPTION_DROPOUT, DIT, FINAL_LR_FRACTION, SHIFT, TEXT, WARMUP_STEPS

WIDTH, HEIGHT, MARGIN = 640, 360, 48


def draw_loss_curve(curve: list[dict], path: Path) -> None:
    """Line chart of the logged mean loss (log scale) against the step, written as PNG."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    steps = [point["step"] for point in curve]
    losses = [math.log10(point["loss"]) for point in curve]
    low, high = math.floor(min(losses) * 10) / 10, math.ceil(max(losses) * 10) / 10
    high = max(high, low + 0.1)
    left, top, right, bottom = MARGIN + 16, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN

    def xy(step: float, log_loss: float) -> tuple[float, float]:
        return (left + (right - left) * step / steps[-1],
                bottom - (bottom - top) * (log_loss - low) / (high - low))

    draw.rectangle((left, top, right, bottom), outline="black")
    for tick in range(5):
        value = low + (high - low) * tick / 4
        _, y = xy(0, value)
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((4, y - 6), f"{10 ** value:.3f}", fill="black", font=font)
    for tick in range(5):
        step = steps[-1] * tick / 4
        x, _ = xy(step, low)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 12, bottom + 8), f"{step:.0f}", fill="black", font=font)
    draw.line([xy(s, v) for s, v in zip(steps, losses)], fill=(31, 90, 200), width=2)
    draw.text((left + 8, top + 6), "flow-matching loss (mean per logging window, log scale)", fill="black", font=font)
    draw.text((WIDTH // 2 - 20, HEIGHT - 18), "training step", fill="black", font=font)
    image.save(path)


def model_card(log: dict, model_dir: Path) -> str:
    size_mb = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors")) / 1e6
    first, last = log["loss_curve"][0], log["loss_curve"][-1]
    compiled = log.get("compiled", False)
    compile_note = ", including torch.compile's compilation of the first step, about 3 minutes" if compiled else ""
    compile_flag = " --compile" if compiled else ""
    return f"""# counting-world: the embedded demo model

A tiny text-to-video model with Wan2.1's architecture (this engine's own `WanDiT`, umT5 text encoder),
trained from scratch on a synthetic counting world, so that NUMINA can be seen changing counts
without downloading Wan2.1. It is what `numina-engine run` uses when no `--ckpt-dir` is given.

## What it makes
5-frame, 32x32-pixel RGB clips of 1 to 6 flat objects, one or two kinds per clip, drifting together over
a dark background. Each noun names one look: apples are red circles, trees green triangles, rings yellow
rings, boxes blue squares, gems cyan diamonds, flowers magenta crosses (objects about 4x4 tokens of the
16x16 grid). Captions name numbers and nouns, never colours or shapes, with optional attributes that
change nothing in the picture: "Three shiny apples and a pair of boxes drifting left." It knows only
this world's words.

## Data
`numina_engine/demo/world.py`: scenes drawn procedurally and deterministically from a seed
(training seed {log['train_seed']}: {log['scenes']:,} distinct scenes, two caption wordings each);
{CAPTION_DROPOUT:.0%} of the captions are dropped (to "" or Wan's default negative prompt) for classifier-free guidance.
The benchmark (`bench/countbench_demo.py`) uses another seed: its prompts are unseen.

## Model
- DiT: Wan2.1 architecture in pixel space (no VAE: `vae/config.json` names `PixelSpace`), patch 1x2x2,
  width {DIT.dim}, {DIT.num_heads} heads of {DIT.head_dim}, {DIT.num_layers} blocks, FFN {DIT.ffn_dim}: {log['dit_parameters']:,} parameters.
- Text encoder: umT5 (transformers `UMT5EncoderModel`), width {TEXT['d_model']}, {TEXT['num_layers']} layers, trained jointly:
  {log['text_encoder_parameters']:,} parameters. Tokenizer: sentencepiece trained on the world's
  vocabulary (`tools/make_tiny_tokenizer.py --world`), saved as a T5 tokenizer folder.
- Weights: exponential moving average (decay {log['ema']}) of the trained weights, float16, {size_mb:.1f} MB
  of weights. Sampling defaults and NUMINA's spatial settings scaled to its 16x16 token grid are in
  `numina_engine.json`.

## Training
Wan's flow matching (velocity target, sigma drawn uniformly then shifted by {SHIFT:g} as the sampler shifts),
AdamW (lr {log['lr']}, {WARMUP_STEPS} warm-up steps, cosine to {FINAL_LR_FRACTION:.0%}), batch {log['batch']}, {log['steps']:,} steps, bfloat16 autocast.
Trained on {log['device']} (torch {log['torch']}) on {log['date']}: {log['train_s']:.0f} s of training
({log['samples_per_s']:.0f} samples/s{compile_note}) after {log['prepare_s']:.0f} s of data preparation.
Loss {first['loss']:.4f} at step {first['step']} -> {last['loss']:.4f} at step {last['step']}.

![loss curve](loss_curve.png)

## Retrain
On one GPU (about {(log['train_s'] + log['prepare_s']) / 60:.0f} minutes on the device above):

    python tools/make_tiny_tokenizer.py --world --out numina_engine/assets/counting-world/tokenizer
    python tools/train_demo_model.py --out /tmp/counting-world --steps {log['steps']} --batch {log['batch']} --scenes {log['scenes']} --lr {log['lr']} --ema {log['ema']}{compile_flag}
    python tools/model_card.py --log /tmp/training_log.json --model /tmp/counting-world

GPU kernels are not bit-deterministic, so a retrained model matches this one in behaviour, not bit for bit.

## Limits
It has seen nothing but this world; other prompts give coloured blobs. It is small and briefly
trained, and its counts are often wrong (merged or missing objects): README's demo benchmark reports
how often plain sampling, NUMINA and NUMINA with oracle layouts get them right.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    log = json.loads(args.log.read_text(encoding="utf-8"))
    draw_loss_curve(log["loss_curve"], args.model / "loss_curve.png")
    (args.model / "MODEL_CARD.md").write_text(model_card(log, args.model), encoding="utf-8")
    (args.model / "training_log.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.model / 'MODEL_CARD.md'} and loss_curve.png")


if __name__ == "__main__":
    main()
