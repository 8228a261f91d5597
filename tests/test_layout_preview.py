"""layout.png's preview: only the shown latent frames of phase 1's estimate are decoded, each alone."""
from __future__ import annotations

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.api import preview_by_latent_frame
from numina_engine.engine import pipeline
from assets_paths import TINY_WAN


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine.load(TINY_WAN, device="cpu")


def record_decodes(engine: Engine, monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of the latents every later VAE decode receives."""
    shapes = []
    real_decode = engine.model.vae.decode

    def decode(latents, **kwargs):
        shapes.append(tuple(latents.shape))
        return real_decode(latents, **kwargs)

    monkeypatch.setattr(engine.model.vae, "decode", decode)
    return shapes


def test_shown_frames_are_decoded_alone_in_one_batch(engine, monkeypatch):
    latents = torch.randn(16, 5, 4, 6, generator=torch.Generator().manual_seed(1))
    shown = pipeline.layout_frames_to_show(5)
    assert shown == [0, 1, 3, 4]
    whole = engine.model.vae.decode(latents.unsqueeze(0))[0]                   # [17, 32, 48, 3]
    alone = [engine.model.vae.decode(latents[:, f:f + 1].unsqueeze(0))[0, 0] for f in shown]
    shapes = record_decodes(engine, monkeypatch)
    preview = pipeline.preview_frames(engine.model, latents, shown)
    assert shapes == [(4, 16, 1, 4, 6)]
    assert preview.dtype == torch.uint8 and preview.shape == (4, 32, 48, 3) and preview.device.type == "cpu"
    assert torch.equal(preview[0], whole[0])                  # causal VAE: the first frame is exact
    for row in range(len(shown)):
        assert torch.equal(preview[row], alone[row])


def test_numina_run_decodes_the_shown_frames_and_the_video_only(engine, monkeypatch):
    shapes = record_decodes(engine, monkeypatch)
    result = engine.generate(GenerationRequest(prompt="Three cats chasing two dogs", width=64, height=64, frames=17,
                                               steps=4, counts={"cats": 2, "dogs": 3},
                                               numina_overrides={"reference_step": 2}), progress=False)
    latent_frames = result.settings.latent_shape[1]                              # 5
    shown = pipeline.layout_frames_to_show(latent_frames)
    assert result.layout.shown_frames == shown
    assert result.layout.preview_frames.shape == (len(shown), 64, 64, 3)
    assert shapes == [(len(shown), 16, 1, 8, 8), (1, 16, latent_frames, 8, 8)]


def test_preview_frames_sit_at_their_latent_frame_for_layout_png():
    labels = torch.zeros(5, 2, 2, dtype=torch.int32)
    shown_pixels = torch.arange(1, 3, dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 4, 4, 3)
    layout = pipeline.LayoutResult(reference={"cats": labels}, refined={"cats": labels},
                                   preview_frames=shown_pixels, shown_frames=[1, 4])
    frames = preview_by_latent_frame(layout)
    assert frames.shape == (5, 4, 4, 3)
    assert torch.equal(frames[1], shown_pixels[0]) and torch.equal(frames[4], shown_pixels[1])
    assert frames[[0, 2, 3]].eq(0).all()
