"""Plain vs NUMINA generation, phase by phase, at Wan2.1-1.3B's real shape with random weights, on a GPU.

Timing does not depend on weight values, so the model is built in memory at the real sizes
(1.3B DiT, umT5-XXL encoder, Wan VAE) with random weights; the tokenizer is the embedded demo one.
Both runs use the same engine and settings, side by side in one process. Prints a table and one
JSON object (phase times, steps computed/reused, peak GPU memory, forward TFLOP/s).

    python bench/e2e.py [--steps 50] [--frames 81] [--size 832*480]

With --steps below 50 the per-step times are also extrapolated to 50 steps (marked as such).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from numina_engine.engine import pipeline
from numina_engine.engine.config import WAN_1_3B
from numina_engine.engine.loading import ModelDefaults, WanModel
from numina_engine.engine.model import WanDiT
from numina_engine.engine.settings import GenerationRequest, parse_size
from numina_engine.engine.text_encoder import TextEncoder
from numina_engine.engine.vae import WanVAE

TOKENIZER = Path(__file__).resolve().parents[1] / "numina_engine" / "assets" / "tiny-wan" / "tokenizer"
FLOP_PER_FORWARD_1_3B_81F = 289e12          # one batch-1 forward at 832x480x81 (shared/ANCHORS.md)
PROMPT = "Three cats chasing two dogs"
COUNTS = {"cats": 2, "dogs": 3}             # differ from what random weights give, so phase 2 runs


def random_model(device: torch.device) -> WanModel:
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):
        dit = WanDiT(WAN_1_3B)
        t5 = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
                                         relative_attention_num_buckets=32, relative_attention_max_distance=128))
        vae = AutoencoderKLWan()
    dit = dit.cast_weights(torch.bfloat16).eval().requires_grad_(False)
    text_encoder = TextEncoder(t5.to(torch.bfloat16).eval().requires_grad_(False),
                               AutoTokenizer.from_pretrained(TOKENIZER, local_files_only=True))
    wan_vae = WanVAE(vae.eval().requires_grad_(False), vae.config.latents_mean, vae.config.latents_std)
    return WanModel(dit=dit, text_encoder=text_encoder, vae=wan_vae, defaults=ModelDefaults(), layout="random",
                    path=Path("random"), device=device, dtype=torch.bfloat16)


def force_modulation() -> None:
    """Random weights give layouts that refinement may leave as they are (e.g. one instance covering
    the frame), so phase 2 would not run. For timing only: after the real layout step, add one disc
    of radius 3 tokens per noun and frame to the refined layout, so that phase 2 regenerates with a
    real modulation plan. The output video is meaningless either way (random weights)."""
    real = pipeline.plan_layouts

    def with_added_disc(model, ref, counts, config):
        reference, refined, summaries = real(model, ref, counts, config)
        for labels in refined.values():
            _, h, w = labels.shape
            ys, xs = torch.meshgrid(torch.arange(h, device=labels.device), torch.arange(w, device=labels.device),
                                    indexing="ij")
            disc = (ys - h // 2) ** 2 + (xs - w // 2) ** 2 <= 9
            labels[:, disc] = 100
        return reference, refined, summaries

    pipeline.plan_layouts = with_added_disc


def timed_run(model: WanModel, request: GenerationRequest) -> dict:
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = pipeline.generate(model, request, progress=False)
    torch.cuda.synchronize()
    return {"total_s": time.perf_counter() - start, "phases_s": result.timings_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "numina": result.report.get("numina", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832*480")
    parser.add_argument("--json", default=None)
    parser.add_argument("--force-modulation", action="store_true",
                        help="timing aid: make phase 2 run even when refinement changes nothing (see force_modulation)")
    args = parser.parse_args()
    if args.force_modulation:
        force_modulation()
    device = torch.device("cuda")
    model = random_model(device)
    width, height = parse_size(args.size)
    common = dict(prompt=PROMPT, seed=1, width=width, height=height, frames=args.frames, steps=args.steps)
    reference_step = min(20, args.steps - 1)
    plain = timed_run(model, GenerationRequest(**common, numina=False))
    numina = timed_run(model, GenerationRequest(**common, counts=COUNTS,
                                                numina_overrides={"reference_step": reference_step}))
    steps = args.steps
    per_step_plain = plain["phases_s"]["denoising"] / steps
    result = {"device": torch.cuda.get_device_name(), "steps": steps, "frames": args.frames, "size": args.size,
              "plain": plain, "numina": numina,
              "numina_over_plain": numina["total_s"] / plain["total_s"],
              "plain_step_s": per_step_plain, "forced_modulation": args.force_modulation}
    if (args.frames, width, height) == (81, 832, 480):
        result["forward_tflops"] = 2 * FLOP_PER_FORWARD_1_3B_81F / per_step_plain / 1e12   # CFG: 2 rows a step
    if steps != 50:
        result["extrapolated_to_50_steps_plain_denoising_s"] = per_step_plain * 50
    print(json.dumps(result, indent=2, default=str))
    print("| run | " + " | ".join(["text", "phase 1", "layout", "preview", "phase 2 / denoise", "decode",
                                    "total", "peak GiB"]) + " |")
    for name, run in (("plain", plain), ("NUMINA", numina)):
        p = run["phases_s"]
        cells = [p.get("text encoding", 0), p.get("phase 1", 0), p.get("layout", 0), p.get("preview decode", 0),
                 p.get("phase 2", p.get("denoising", 0)), p.get("decode", 0), run["total_s"]]
        print(f"| {name} | " + " | ".join(f"{c:.2f} s" for c in cells) + f" | {run['peak_gib']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
