"""Python API: load a checkpoint once, make many videos.

    import numina_engine
    engine = numina_engine.Engine.load("/models/Wan2.1-T2V-1.3B")    # or Engine.load() for the demo model
    result = engine.generate(numina_engine.GenerationRequest(prompt="Three cats chasing two dogs", seed=1))
    engine.save(result, "out/")                                       # video.mp4 + report.json
"""
from __future__ import annotations

import dataclasses
import json
import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from .engine import pipeline
from .engine.attention import check_attention_setting
from .engine.loading import WanModel, load_model, resolve_device
from .engine.offload import load_offloaded, offload_mode
from .engine.settings import GenerationRequest
from .engine.video_io import atomic_output, upscale_nearest, write_mp4
from .numina.layout_image import render_layout_png

VIDEO_FPS = 16
OUTPUT_FILES = {"video": "video.mp4", "preview": "video_preview.mp4", "layout": "layout.png",
                "report": "report.json"}
SMALL_VIDEO_SIDE = 128     # px: videos with a shorter side below this are written lossless (no 4:2:0 smear)
PREVIEW_SIDE = 256         # px: the upscaled preview of a small video has at least this shorter side


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


def _missing_folders(folder: Path) -> list[Path]:
    """The folders `folder.mkdir(parents=True)` would make, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


class Engine:
    """A loaded Wan2.1 checkpoint and the NUMINA pipeline around it.

    `cuda_graphs`: replay the denoising steps from CUDA graphs (ignored off CUDA). `offload`: "none",
    "text-encoder" (its weights stay on the CPU, streamed to the GPU to encode) or "full" (also the DiT
    off the GPU while the VAE decodes, for small GPUs); True means "full" (engine/offload.py). The DiT's
    self-attention ("bf16" SDPA or "fp8") is the model's setting: `model.dit.kernels.attention`.
    """

    def __init__(self, model: WanModel, *, cuda_graphs: bool = True, offload: bool | str = False):
        self.model = model
        self.cuda_graphs = cuda_graphs
        self.offload = offload_mode(offload)

    @property
    def attention(self) -> str:
        """The plain self-attention calls' implementation: "bf16" (SDPA) or "fp8" (kernels/fp8_attention.py)."""
        return self.model.dit.kernels.attention

    @classmethod
    def load(cls, ckpt_dir: str | Path | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None, *, cuda_graphs: bool = True, offload: bool | str = False,
             attention: str = "bf16") -> "Engine":
        """`ckpt_dir=None` loads the embedded demo model; see `numina_engine.engine.loading` for layouts.
        With offload ("text-encoder" or "full") the text encoder is loaded onto the CPU and stays there.
        `attention`: "bf16" (SDPA) or "fp8" for the DiT's plain self-attention calls; "fp8" on a device
        without FP8 tensor cores is refused (UserInputError) before any weights load."""
        device = device if isinstance(device, torch.device) else resolve_device(device)
        if attention != "bf16":            # the head size from the config file alone, before any weights load
            from .engine.parallel import read_dit_config
            config = read_dit_config(ckpt_dir)
            check_attention_setting(attention, device, config.dim // config.num_heads)
        check_attention_setting(attention, device)
        load = load_offloaded if offload_mode(offload) != "none" else load_model
        model = load(ckpt_dir, device=device, dtype=dtype)
        model.dit.kernels = dataclasses.replace(model.dit.kernels, attention=attention)   # set once, before any run
        return cls(model, cuda_graphs=cuda_graphs, offload=offload)

    def check(self, request: GenerationRequest) -> pipeline.Prepared:
        """Validate a request (sizes, counts, nouns, NUMINA settings) without generating; raises UserInputError."""
        return pipeline.prepare(self.model, request)

    def generate(self, request: GenerationRequest, *, progress: bool = True,
                 edit_layout=None, prepared: pipeline.Prepared | None = None) -> pipeline.GenerationResult:
        """One video; `edit_layout` as in pipeline.generate (tests and benchmarks: a planted layout);
        `prepared`: `check(request)`'s result, when already made (not checked again)."""
        return pipeline.generate(self.model, request, progress=progress, cuda_graphs=self.cuda_graphs,
                                 offload=self.offload, edit_layout=edit_layout, prepared=prepared)

    def save(self, result: pipeline.GenerationResult, out_dir: str | Path, *, preview: bool = False,
             stem: str | None = None, video_format: str = "mp4") -> dict[str, Path]:
        """Write video.mp4, layout.png (NUMINA runs) and report.json into `out_dir`; returns their paths.

        All or nothing: every file is written to a temp file first and renamed into place only when all
        are written (report.json last); on any error or Ctrl-C the temp files and the folders this call
        made are removed. A layout.png or video_preview.mp4 of an earlier run that this one does not
        write is removed. A video whose shorter side is below SMALL_VIDEO_SIDE px is written lossless;
        with `preview`, also video_preview.mp4: nearest-upscaled to at least PREVIEW_SIDE px (4:2:0, any player).
        With `stem` the names are <stem>.mp4, <stem>.preview.mp4, <stem>.layout.png and <stem>.json
        (batch runs). video_format "npy": the frames as a .npy file (uint8 [T, H, W, 3], lossless, no
        PyAV needed) instead of mp4, and no preview.
        """
        if video_format not in ("mp4", "npy"):
            raise ValueError(f"video_format must be 'mp4' or 'npy', got {video_format!r}")
        out_dir = Path(out_dir)
        frames = result.frames.numpy()
        _, height, width, _ = frames.shape
        small = min(height, width) < SMALL_VIDEO_SIDE
        names = (["video"] + (["preview"] if preview and small and video_format == "mp4" else [])
                 + (["layout"] if result.layout is not None else []))
        files = (dict(OUTPUT_FILES, video=f"video.{video_format}") if stem is None else
                 {"video": f"{stem}.{video_format}", "preview": f"{stem}.preview.mp4",
                  "layout": f"{stem}.layout.png", "report": f"{stem}.json"})
        paths = {name: out_dir / files[name] for name in [*names, "report"]}
        made = _missing_folders(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with ExitStack() as renames:        # exits in reverse: report.json renamed last
                temp = {name: renames.enter_context(atomic_output(paths[name], paths[name].suffix))
                        for name in ["report", *reversed(names)]}
                if video_format == "npy":
                    np.save(temp["video"], frames)
                else:
                    write_mp4(temp["video"], frames, fps=VIDEO_FPS, lossless=small)
                if "preview" in temp:
                    factor = math.ceil(PREVIEW_SIDE / min(height, width))
                    write_mp4(temp["preview"], upscale_nearest(frames, factor), fps=VIDEO_FPS)
                if "layout" in temp:
                    layout = result.layout
                    render_layout_png(temp["layout"], preview_by_latent_frame(layout), layout.reference,
                                      layout.refined, frames_to_show=layout.shown_frames)
                temp["report"].write_text(json.dumps(self.report(result, paths), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")       # already a temp file of atomic_output
        except BaseException:
            for folder in reversed(made):
                _remove_if_empty(folder)
            raise
        for name in ("preview", "layout"):
            if name not in paths:
                (out_dir / files[name]).unlink(missing_ok=True)     # stale, from an earlier run
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
            "attention": self.attention,
            "timings_s": {name: round(value, 4) for name, value in result.timings_s.items()},
            **result.report,
            **{f"{name}_path": str(path.resolve()) for name, path in paths.items() if name != "report"},
        }
