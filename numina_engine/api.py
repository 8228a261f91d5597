"""Python API: load a checkpoint once, make many videos.

    import numina_engine
    engine = numina_engine.Engine.load("/models/Wan2.1-T2V-1.3B")    # or Engine.load() for the demo model
    result = engine.generate(numina_engine.GenerationRequest(prompt="Three cats chasing two dogs", seed=1))
    engine.save(result, "out/")                                       # video.mp4 + report.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .engine import pipeline
from .engine.loading import WanModel, load_model
from .engine.offload import load_offloaded
from .engine.settings import GenerationRequest
from .engine.video_io import atomic_output, write_mp4
from .numina.layout_image import render_layout_png

VIDEO_FPS = 16


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temp file in the same folder and rename it into place."""
    with atomic_output(path, ".json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def preview_by_latent_frame(layout: pipeline.LayoutResult) -> torch.Tensor:
    """uint8 [F, H, W, 3], indexed by latent frame as render_layout_png reads it: the decoded preview at
    `layout.shown_frames`, black at the frames layout.png does not show (only those were decoded)."""
    num_frames = next(iter(layout.reference.values())).shape[0]
    frames = layout.preview_frames.new_zeros((num_frames, *layout.preview_frames.shape[1:]))
    frames[layout.shown_frames] = layout.preview_frames
    return frames


class Engine:
    """A loaded Wan2.1 checkpoint and the NUMINA pipeline around it.

    `cuda_graphs`: replay the denoising steps from CUDA graphs (ignored off CUDA). `offload`: the text
    encoder stays on the CPU and the DiT leaves the GPU while the VAE decodes, for small GPUs.
    """

    def __init__(self, model: WanModel, *, cuda_graphs: bool = True, offload: bool = False):
        self.model = model
        self.cuda_graphs = cuda_graphs
        self.offload = offload

    @classmethod
    def load(cls, ckpt_dir: str | Path | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, *, cuda_graphs: bool = True, offload: bool = False) -> "Engine":
        """`ckpt_dir=None` loads the embedded demo model; see `numina_engine.engine.loading` for layouts.
        With `offload` the text encoder is loaded onto the CPU and stays there."""
        load = load_offloaded if offload else load_model
        return cls(load(ckpt_dir, device=device, dtype=dtype), cuda_graphs=cuda_graphs, offload=offload)

    def check(self, request: GenerationRequest) -> pipeline.Prepared:
        """Validate a request (sizes, counts, nouns, NUMINA settings) without generating; raises UserInputError."""
        return pipeline.prepare(self.model, request)

    def generate(self, request: GenerationRequest, *, progress: bool = True) -> pipeline.GenerationResult:
        return pipeline.generate(self.model, request, progress=progress, cuda_graphs=self.cuda_graphs,
                                 offload=self.offload)

    def save(self, result: pipeline.GenerationResult, out_dir: str | Path, stem: str | None = None,
             video_format: str = "mp4") -> dict[str, Path]:
        """Write video.mp4, layout.png (NUMINA runs) and report.json into `out_dir`, each atomically,
        report last; returns their paths. With `stem` the names are <stem>.mp4, <stem>.layout.png, <stem>.json.
        video_format "npy": the frames as a .npy file (uint8 [T, H, W, 3], lossless, no PyAV) instead of mp4."""
        if video_format not in ("mp4", "npy"):
            raise ValueError(f"video_format must be 'mp4' or 'npy', got {video_format!r}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = ((f"{stem}.{video_format}", f"{stem}.json", f"{stem}.layout.png") if stem
                 else (f"video.{video_format}", "report.json", "layout.png"))
        paths = {"video": out_dir / names[0], "report": out_dir / names[1]}
        if video_format == "npy":
            with atomic_output(paths["video"], ".npy") as tmp:
                np.save(tmp, result.frames.numpy())
        else:
            write_mp4(paths["video"], result.frames.numpy(), fps=VIDEO_FPS)
        if result.layout is not None:
            paths["layout"] = out_dir / names[2]
            layout = result.layout
            render_layout_png(paths["layout"], preview_by_latent_frame(layout), layout.reference, layout.refined,
                              frames_to_show=layout.shown_frames)
        write_json_atomic(paths["report"], self.report(result, paths))
        return paths

    def report(self, result: pipeline.GenerationResult, paths: dict[str, Path]) -> dict:
        s = result.settings
        return {
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "seed": s.seed,
            "width": s.width,
            "height": s.height,
            "frames": s.frames,
            "latent_shape": list(s.latent_shape),
            "steps": s.steps,
            "guide_scale": s.guide_scale,
            "shift": s.shift,
            "fps": VIDEO_FPS,
            "checkpoint": {"path": str(self.model.path), "layout": self.model.layout,
                           "note": self.model.defaults.note},
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "timings_s": {name: round(value, 4) for name, value in result.timings_s.items()},
            **result.report,
            **{f"{name}_path": str(path.resolve()) for name, path in paths.items() if name != "report"},
        }
