"""The runs tests/test_parallel.py compares: the same requests on one process and on a spawned gloo world.

Every request makes a 48x48, 9-frame video of tests/assets/tiny-wan (fp32, CPU): 3 latent frames of
3x3 tokens, 27 tokens, divisible by neither 2 nor 4, so Ulysses pads and masks.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from numina_engine import Engine, GenerationRequest
from numina_engine.engine import pipeline
from numina_engine.engine.parallel import ParallelPlan, parallelize
from assets_paths import TINY_WAN

SHAPE = {"width": 48, "height": 48, "frames": 9}
PROMPT = "Three cats chasing two dogs"
COUNTS = {"cats": 3, "dogs": 2}
REQUESTS = {
    "plain": GenerationRequest(prompt=PROMPT, steps=4, numina=False, **SHAPE),
    # the engine's rules: exact PCA, full attention out of the reference block
    "numina_engine": GenerationRequest(prompt=PROMPT, steps=10, counts=COUNTS,
                                     numina_overrides={"easycache_warmup": 1}, **SHAPE),
    # the authors' rules: svd_lowrank PCA (seeded per frame and head), within-frame block output
    "numina_authors": GenerationRequest(prompt=PROMPT, steps=8, counts=COUNTS,
                                        numina_overrides={"mode": "authors"}, **SHAPE),
}
REPORT_KEYS = ("phase2", "best_head_per_frame", "counts_found_per_frame", "phase1_steps_computed",
               "phase1_steps_reused", "phase2_modulated_steps")


def generate_all(plan: ParallelPlan | None = None, rank: int = 0) -> dict:
    """{request name: {"latents": the decoded latents float32 [C, F, h, w], "frames": uint8 video,
    "reference"/"refined": {noun: labels} (NUMINA runs), "report": report.json's NUMINA entries}}."""
    engine = Engine.load(TINY_WAN, device="cpu")
    if plan is not None:
        engine.model = parallelize(engine.model, plan, rank)
    decoded: list[torch.Tensor] = []
    original = pipeline.decode_video

    def recording_decode(model, latents, timer, *, offload):
        decoded.append(latents.clone())
        return original(model, latents, timer, offload=offload)

    pipeline.decode_video = recording_decode
    try:
        results = {}
        for name, request in REQUESTS.items():
            result = engine.generate(request, progress=False)
            entry = {"latents": decoded[-1], "frames": result.frames}
            if result.layout is not None:
                numina = result.report["numina"]
                entry.update(reference=result.layout.reference, refined=result.layout.refined,
                             report={key: numina[key] for key in REPORT_KEYS})
            results[name] = entry
        return results
    finally:
        pipeline.decode_video = original


def run_rank(rank: int, world_size: int, cfg: int, ulysses: int, port: int, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: rank `rank` of a gloo world runs every request under the plan
    and saves its results to out_dir/rank<k>.pt."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = generate_all(ParallelPlan(cfg, ulysses), rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
