"""Write the tests' tiny Wan checkpoint: a tiny Wan2.1-architecture model with random weights.

It is a real checkpoint in the diffusers layout (transformer/, text_encoder/, tokenizer/, vae/,
scheduler/, model_index.json), with a real (tiny) Wan VAE, that loads through the same loader as
Wan2.1-T2V-1.3B; the tests use it wherever Wan's latent geometry matters. Its weights are random: the
video it makes is not a meaningful picture. Deterministic: the same files every run (seed 0).

    python tools/make_demo_checkpoint.py            # writes tests/assets/tiny-wan/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from numina_engine.engine.config import WanConfig
from numina_engine.engine.model import WanDiT
from numina_engine.engine.weights import official_to_diffusers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "assets" / "tiny-wan"

DIT = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=4, text_dim=32, freq_dim=64)
TEXT = dict(vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
           temperal_downsample=[False, True, True])
NOTE = ("tiny test checkpoint with random weights: it exercises the whole engine, but its video is not a "
        "meaningful picture. Use --ckpt-dir with real Wan2.1-T2V weights for real videos.")
# 128x128, 9 frames -> latent 3x16x16 -> token grid 3x8x8; NUMINA's spatial settings scaled to an 8x8 grid.
SIDECAR = dict(width=128, height=128, frames=9, steps=12, guide_scale=5.0, shift=5.0, note=NOTE,
               numina=dict(reference_step=5, reference_layer=2, dbscan_eps=1.5, dbscan_min_samples=3,
                           circle_radius=2, placement_grid_step=1, modulation_center=6.0, easycache_warmup=3))
SCHEDULER = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "solver_order": 2,
             "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 5.0,
             "solver_type": "bh2", "lower_order_final": True, "predict_x0": True}


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out
    torch.manual_seed(0)

    dit = WanDiT(DIT)
    (out / "transformer").mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in official_to_diffusers(dit.state_dict()).items()}
    save_file(state, out / "transformer" / "diffusion_pytorch_model.safetensors")
    write_json(out / "transformer" / "config.json", DIT.to_diffusers_json())

    from transformers import UMT5Config, UMT5EncoderModel
    UMT5EncoderModel(UMT5Config(**TEXT)).save_pretrained(out / "text_encoder")

    from diffusers import AutoencoderKLWan
    AutoencoderKLWan(**VAE).save_pretrained(out / "vae")

    if not (out / "tokenizer" / "spiece.model").is_file():
        raise SystemExit(f"{out / 'tokenizer'} is missing: run tools/make_tiny_tokenizer.py first")
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER)
    write_json(out / "model_index.json", {"_class_name": "WanPipeline",
                                          "transformer": ["diffusers", "WanTransformer3DModel"],
                                          "text_encoder": ["transformers", "UMT5EncoderModel"],
                                          "tokenizer": ["transformers", "T5TokenizerFast"],
                                          "vae": ["diffusers", "AutoencoderKLWan"],
                                          "scheduler": ["diffusers", "UniPCMultistepScheduler"]})
    write_json(out / "numina_engine.json", SIDECAR)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
