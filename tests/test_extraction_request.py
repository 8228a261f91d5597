"""What the reference step extracts follows what the layout reads, on the embedded demo model (CPU).

With layout_instances "focus_clusters" (the demo checkpoint's engine-mode choice) the layout is built
from the noun maps alone: no within-frame self-attention map is written and no head is scored, and the
run is bit for bit the run that computes them. MeanShift layouts still get them.
"""
from __future__ import annotations

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.engine import extraction as extraction_module
from numina_engine.engine import pipeline

PROMPT = "Three apples and two trees drifting left."
COUNTS = {"apples": 3, "trees": 2}
STEPS = 4                      # reference step 2 (the demo's 10 of 20, scaled)
SMALL = {"width": 16, "height": 16, "frames": 3, "steps": STEPS}      # a 3 x 8 x 8 token grid: quick on a CPU


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(device="cpu")


def run(engine, monkeypatch, **overrides):
    """(result, ReferencePass, score_heads calls) of one demo run with these NUMINA overrides."""
    calls, seen = [], {}
    score_heads, plan_layouts = extraction_module.score_heads, pipeline.plan_layouts

    def counted_score_heads(*args, **kwargs):
        calls.append(1)
        return score_heads(*args, **kwargs)

    def kept_plan_layouts(ref, *args):
        seen["ref"] = ref
        return plan_layouts(ref, *args)

    monkeypatch.setattr(extraction_module, "score_heads", counted_score_heads)
    monkeypatch.setattr(pipeline, "plan_layouts", kept_plan_layouts)
    request = GenerationRequest(prompt=PROMPT, seed=2, counts=COUNTS, numina_overrides=overrides, **SMALL)
    result = engine.generate(request, progress=False)
    return result, seen["ref"], len(calls)


@pytest.mark.parametrize("block_output", ["full", "within_frame"])
def test_focus_clusters_skip_the_self_maps_and_change_nothing(engine, monkeypatch, block_output):
    """(a) no head scoring and no self maps; (b) the same phase-1 latents, noun maps, layouts, video and report
    (best heads aside) as a run forced to compute them, as every run did before."""
    overrides = {"extraction_block_output": block_output}
    result, ref, scored = run(engine, monkeypatch, **overrides)
    assert result.report["numina"]["behaviours"]["layout_instances"] == "focus_clusters"
    assert scored == 0
    assert ref.extraction.self_maps is None and ref.extraction.best_head is None
    assert ref.extraction.head_scores is None
    assert result.report["numina"]["best_head_per_frame"] is None

    monkeypatch.setattr(pipeline, "uses_self_maps", lambda config: True)         # the extraction as it was
    old, old_ref, old_scored = run(engine, monkeypatch, **overrides)
    assert old_scored > 0 and old_ref.extraction.self_maps is not None
    assert torch.equal(ref.extraction.noun_maps, old_ref.extraction.noun_maps)
    assert torch.equal(ref.latents, old_ref.latents) and torch.equal(ref.preview, old_ref.preview)
    for noun in COUNTS:
        assert torch.equal(result.layout.reference[noun], old.layout.reference[noun])
        assert torch.equal(result.layout.refined[noun], old.layout.refined[noun])
    assert torch.equal(result.layout.preview_frames, old.layout.preview_frames)
    assert torch.equal(result.frames, old.frames)
    assert len(old.report["numina"]["best_head_per_frame"]) == ref.extraction.grid[0]
    assert ({**result.report["numina"], "best_head_per_frame": None}
            == {**old.report["numina"], "best_head_per_frame": None})


def test_meanshift_layouts_still_get_the_self_maps_and_best_heads(engine, monkeypatch):
    """(c) layout_instances "meanshift" reads the self maps: they and the head scores are computed."""
    result, ref, scored = run(engine, monkeypatch, layout_instances="meanshift")
    frames, height, width = ref.extraction.grid
    assert scored > 0
    assert ref.extraction.self_maps.shape == (frames, height * width, height * width)
    assert ref.extraction.head_scores.shape[0] == frames
    assert result.report["numina"]["best_head_per_frame"] == ref.extraction.best_head.tolist()


def test_a_prepared_request_is_used_only_with_its_own_request(engine):
    """generate takes check()'s result instead of preparing again, and refuses one made for another request."""
    request = GenerationRequest(prompt=PROMPT, counts=COUNTS, **SMALL)
    prepared = engine.check(request)
    request.counts["apples"] = 4                       # changed after the check
    with pytest.raises(ValueError, match="another request"):
        engine.generate(request, progress=False, prepared=prepared)
