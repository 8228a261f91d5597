"""WanDiT against diffusers' WanTransformer3DModel at Wan2.1-1.3B's real shape, on a GPU.

Same random weights in both (diffusers' init, converted by this project's key mapping), same inputs:
832x480, 81 frames (latent 16x21x60x104, 32,760 tokens), 512 text tokens, bf16. Prints the relative
error of the outputs and one forward's median time for each, side by side in one run.

    python -m bench.dit_vs_diffusers [--dtype bf16|fp32] [--frames 81] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.timing import median_ms

from numina_engine.engine.config import WAN_1_3B, WanConfig
from numina_engine.engine.model import WanDiT
from numina_engine.engine.weights import diffusers_to_official

FLOP_PER_FORWARD_1_3B_81F = 289e12      # official Wan2.1-1.3B, 832x480x81 (shared/ANCHORS.md)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    from diffusers import WanTransformer3DModel

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = torch.device("cuda")
    config: WanConfig = WAN_1_3B
    torch.manual_seed(0)
    with torch.device(device):
        reference = WanTransformer3DModel(**{k: v for k, v in config.to_diffusers_json().items()
                                             if not k.startswith("_")})
    reference = reference.to(dtype).eval().requires_grad_(False)
    ours = WanDiT(config).to(device)
    ours.load_state_dict(diffusers_to_official(reference.state_dict()), strict=True)
    ours = ours.cast_weights(dtype).eval().requires_grad_(False)

    gen = torch.Generator(device).manual_seed(1)
    latent = (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    latents = torch.randn(latent, generator=gen, device=device)
    timestep = torch.tensor([757.0], device=device)
    context = torch.randn(1, 512, config.text_dim, generator=gen, device=device)
    context[:, 40:] = 0                                                   # zero-padded text past the prompt

    with torch.inference_mode():
        out_ours = ours(latents, timestep, context.to(dtype))
        out_ref = reference(latents.to(dtype), timestep, context.to(dtype), return_dict=False)[0].float()
        rel = ((out_ours - out_ref).norm() / out_ref.norm()).item()
        ms_ours = median_ms(lambda: ours(latents, timestep, context.to(dtype)), args.repeats)
        ms_ref = median_ms(lambda: reference(latents.to(dtype), timestep, context.to(dtype), return_dict=False),
                           args.repeats)
    tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
    result = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "tokens": tokens,
              "relative_error_vs_diffusers": rel, "ours_ms": ms_ours, "diffusers_ms": ms_ref,
              "speedup": ms_ref / ms_ours, "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    if (args.frames, args.width, args.height) == (81, 832, 480):
        result["ours_tflops"] = FLOP_PER_FORWARD_1_3B_81F / (ms_ours / 1e3) / 1e12
    print(json.dumps(result, indent=2))
    if args.json:
        from bench.results_file import write_results
        write_results(args.json, "bench/dit_vs_diffusers.py", result)
    print(f"| {result['device']} | {args.dtype} | {tokens} tokens | ours {ms_ours:.1f} ms | diffusers {ms_ref:.1f} ms "
          f"| rel. error {rel:.2e} |")


if __name__ == "__main__":
    main()
