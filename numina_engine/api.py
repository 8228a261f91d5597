"""Python API: load a checkpoint once, make many videos.

    import numina_engine
    engine = numina_engine.Engine.load("/models/Wan2.1-T2V-1.3B")    # or Engine.load() for the demo model
    result = engine.generate(numina_engine.GenerationRequest(prompt="Three cats chasing two dogs", seed=1))
    engine.save(result, "out/")                                       # video.mp4 + report.json
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .engine import pipeline
from .engine.loading import WanModel, load_model
from .engine.settings import GenerationRequest
from .engine.video_io import atomic_output, write_mp4
from .numina.layout_image import render_layout_png

VIDEO_FPS = 16
LAYOUT_COLUMNS = 4


def layout_frames_to_show(num_frames: int) -> list[int]:
    """Up to LAYOUT_COLUMNS latent frames spread evenly from first to last."""
    count = min(LAYOUT_COLUMNS, num_frames)
    return sorted({round(i * (num_frames - 1) / max(count - 1, 1)) for i in range(count)})


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON through a temp file in the same folder and rename it into place."""
    with atomic_output(path, ".json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class Engine:
    """A loaded Wan2.1 checkpoint and the NUMINA pipeline around it."""

    def __init__(self, model: WanModel):
        self.model = model

    @classmethod
    def load(cls, ckpt_dir: str | Path | None = None, device: str | torch.device | None = None,
             dtype: torch.dtype | None = None) -> "Engine":
        """`ckpt_dir=None` loads the embedded demo model; see `numina_engine.engine.loading` for layouts."""
        return cls(load_model(ckpt_dir, device=device, dtype=dtype))

    def check(self, request: GenerationRequest) -> pipeline.Prepared:
        """Validate a request (sizes, counts, nouns, NUMINA settings) without generating; raises UserInputError."""
        return pipeline.prepare(self.model, request)

    def generate(self, request: GenerationRequest, *, progress: bool = True) -> pipeline.GenerationResult:
        return pipeline.generate(self.model, request, progress=progress)

    def save(self, result: pipeline.GenerationResult, out_dir: str | Path) -> dict[str, Path]:
        """Write video.mp4, layout.png (NUMINA runs) and report.json into `out_dir`, each atomically,
        report last; returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"video": out_dir / "video.mp4", "report": out_dir / "report.json"}
        write_mp4(paths["video"], result.frames.numpy(), fps=VIDEO_FPS)
        if result.layout is not None:
            paths["layout"] = out_dir / "layout.png"
            layout = result.layout
            render_layout_png(paths["layout"], layout.preview_frames, layout.reference, layout.refined,
                              frames_to_show=layout_frames_to_show(layout.preview_frames.shape[0]))
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
