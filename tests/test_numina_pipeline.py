"""The NUMINA flow through the engine: extraction at the reference layer, early exit, EasyCache,
and the modulated cross-attention route, on the embedded demo model."""
from __future__ import annotations

import pytest
import torch

from numina_engine import Engine, GenerationRequest
from numina_engine.engine import pipeline
from numina_engine.engine.extraction import frame_maps_bytes
from numina_engine.engine.forward_state import Extraction, ForwardState, Modulation
from numina_engine.engine.scheduler import FlowUniPCScheduler
from numina_engine.numina.config import LABEL_ADDED_BASE, NuminaConfig
from numina_engine.numina.modulation import build_modulation_plan, layout_bias
from assets_paths import TINY_WAN


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    return Engine.load(TINY_WAN, device="cpu")


@pytest.fixture(scope="module")
def inputs(engine):
    request = GenerationRequest(prompt="Three cats chasing two dogs", steps=6, counts={"cats": 3, "dogs": 2})
    settings = engine.check(request).settings
    context = pipeline.encode_prompts(engine.model, settings)
    latents = torch.randn(settings.latent_shape, generator=torch.Generator().manual_seed(4))
    return settings, context, latents


def extract(engine, latents, context, stop: bool, layer: int = 2) -> Extraction:
    grid = engine.model.dit.token_grid(latents.shape)
    two_frames = 2 * frame_maps_bytes(engine.model.dit.config.num_heads, grid[1] * grid[2])
    extraction = Extraction(layer=layer, grid=grid, noun_tokens=torch.tensor([[2, -1], [7, 8]], dtype=torch.int32),
                            config=NuminaConfig(), maps_budget_bytes=two_frames)
    state = ForwardState(extraction=extraction, stop_after_layer=layer if stop else None)
    out = engine.model.dit(latents.unsqueeze(0), torch.tensor([700.0]), context[:1], state=state)
    assert (out is None) == stop
    return extraction


def test_early_exit_does_not_change_the_extracted_maps(engine, inputs):
    _, context, latents = inputs
    early, full = extract(engine, latents, context, stop=True), extract(engine, latents, context, stop=False)
    for name in ("self_maps", "best_head", "head_scores", "noun_maps"):
        assert torch.equal(getattr(early, name), getattr(full, name)), name


def test_extraction_equals_plain_attention_maps_of_the_best_head(engine, inputs, monkeypatch):
    """The maps handed to layout are softmax(Q_f K_f^T / sqrt(d)) of each frame's best-scoring head."""
    _, context, latents = inputs
    captured = {}
    from numina_engine.engine import attention

    def spy(q, k, v, *, layer_index, state, **kwargs):
        if layer_index == 2:
            captured["q"], captured["k"] = q[0].clone(), k[0].clone()
        return original(q, k, v, layer_index=layer_index, state=state, **kwargs)

    original = attention.self_attention
    monkeypatch.setattr(attention, "self_attention", spy)
    extraction = extract(engine, latents, context, stop=True)
    f, h, w = extraction.grid
    n = h * w
    q = captured["q"].unflatten(0, (f, n))                           # [F, N, H, D]
    k = captured["k"].unflatten(0, (f, n))
    maps = torch.softmax(torch.einsum("fihd,fjhd->fhij", q, k) / q.shape[-1] ** 0.5, dim=-1)
    expected = maps[torch.arange(f), extraction.best_head]
    torch.testing.assert_close(extraction.self_maps, expected, rtol=1e-4, atol=1e-6)
    assert extraction.noun_maps.shape == (2, f, n)


def test_easycache_with_zero_tolerance_reproduces_the_uncached_run(engine, inputs):
    settings, context, latents = inputs
    config = NuminaConfig(total_steps=6, reference_step=4, reference_layer=2, easycache_tau=0.0,
                          easycache_warmup=1)
    noun_tokens = torch.tensor([[2]], dtype=torch.int32)
    ref = pipeline.reference_pass(engine.model, latents, context, settings, config, noun_tokens, progress=False)
    assert (ref.computed_steps, ref.reused_steps) == (5, 0)
    scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift, sigma_grid=config.sigma_grid)
    plain = pipeline.denoise(engine.model, latents, context, scheduler, settings, range(4), progress=False)
    assert torch.equal(ref.latents, plain)

    cached = pipeline.reference_pass(engine.model, latents, context, settings,
                                     config.with_overrides(easycache_tau=10.0), noun_tokens, progress=False)
    assert cached.reused_steps > 0 and not torch.equal(cached.latents, plain)


def test_phase_two_reuses_the_first_unconditional_prediction_of_phase_one(engine, inputs, monkeypatch):
    """Phase 2 starts from phase 1's noise at the same timestep and biases only the conditional row, so
    its first unconditional prediction is phase 1's: the first step runs the conditional row alone and
    ends where recomputing both rows ends."""
    settings, context, latents = inputs
    config = NuminaConfig(total_steps=6, reference_step=3, reference_layer=2)
    ref = pipeline.reference_pass(engine.model, latents, context, settings, config,
                                  torch.tensor([[2]], dtype=torch.int32), progress=False)
    _, recomputed_uncond = pipeline.flow_predictions(engine.model, latents, pipeline.timestep_at(
        ref.scheduler, 0, engine.model.device), context)
    assert torch.equal(ref.first_uncond, recomputed_uncond)

    labels = torch.zeros(engine.model.dit.token_grid(latents.shape), dtype=torch.int32)
    labels[:, 1:3, 1:3] = 100
    plan = build_modulation_plan({"cats": labels}, {"cats": [2]}, "cpu")
    state = ForwardState(modulation=Modulation(plan=plan, delta=torch.tensor(1.5), config=config, batch_index=0))
    batches = []
    forward = engine.model.dit.forward
    monkeypatch.setattr(engine.model.dit, "forward", lambda x, *a, **kw: batches.append(x.shape[0]) or forward(x, *a, **kw))

    def run(first_uncond):
        batches.clear()
        scheduler = FlowUniPCScheduler(settings.steps, shift=settings.shift)
        out = pipeline.denoise(engine.model, latents, context, scheduler, settings, range(2),
                               state_at=lambda step: state, progress=False, first_uncond=first_uncond)
        return out, list(batches)

    reused, reused_batches = run(ref.first_uncond)
    recomputed, recomputed_batches = run(None)
    assert (reused_batches, recomputed_batches) == ([1, 2], [2, 2])
    torch.testing.assert_close(reused, recomputed, rtol=1e-5, atol=1e-5)


def test_modulated_route_applies_the_layout_bias_to_the_conditional_row_only(engine, inputs, monkeypatch):
    settings, context, latents = inputs
    f, h, w = engine.model.dit.token_grid(latents.shape)
    labels = torch.zeros(f, h, w, dtype=torch.int32)
    labels[:, 1:3, 1:3] = 1
    labels[:, 5:7, 5:7] = -1
    labels[:, 4:6, 0:2] = 100
    config = NuminaConfig()
    plan = build_modulation_plan({"cats": labels}, {"cats": [2, 3]}, "cpu")
    delta = torch.tensor(1.5)
    state = ForwardState(modulation=Modulation(plan=plan, delta=delta, config=config, batch_index=0))
    captured = {}
    from numina_engine.engine import attention

    def spy(q, k, v, *, layer_index, state, **kwargs):
        out = original(q, k, v, layer_index=layer_index, state=state, **kwargs)
        if layer_index == 1:
            captured.update(q=q, k=k, v=v, out=out)
        return out

    original = attention.cross_attention
    monkeypatch.setattr(attention, "cross_attention", spy)
    batch = latents.unsqueeze(0).expand(2, *latents.shape)
    engine.model.dit(batch, torch.tensor([500.0, 500.0]), context, state=state)
    q, k, v = captured["q"], captured["k"], captured["v"]
    dense = torch.zeros(q.shape[1], k.shape[1])
    rows, columns = plan.modulated_queries[:, None], plan.bias_columns.long()[None, :]
    dense.index_put_((rows, columns), layout_bias(plan, q[0], k[0], delta, config), accumulate=True)
    logits = torch.einsum("ihd,jhd->hij", q[0], k[0]) / q.shape[-1] ** 0.5 + dense
    expected_cond = torch.einsum("hij,jhd->ihd", logits.softmax(-1), v[0])
    expected_uncond = torch.nn.functional.scaled_dot_product_attention(
        q[1:].transpose(1, 2), k[1:].transpose(1, 2), v[1:].transpose(1, 2)).transpose(1, 2)[0]
    torch.testing.assert_close(captured["out"][0], expected_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured["out"][1], expected_uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(captured["out"][0], original(q[:1], k[:1], v[:1], layer_index=1, state=None)[0])


def planted_layouts(instances_per_frame: dict[str, int] | None = None, whole_frame: bool = False):
    """A build_layouts stand-in: per noun (in order) `count` 1-token instances per frame, or one
    instance covering the whole frame."""
    def build(self_maps, noun_maps, grid_hw, config):
        n_nouns, frames = noun_maps.shape[:2]
        labels = torch.zeros(n_nouns, frames, *grid_hw, dtype=torch.int32)
        for row in range(n_nouns):
            if whole_frame:
                labels[row] = 1
            else:
                count = list(instances_per_frame.values())[row]
                for i in range(count):
                    labels[row, :, 0, 2 * i] = i + 1
        return labels
    return build


def test_counts_already_right_run_phase_one_on_in_engine_mode(engine, monkeypatch):
    """When every frame already has the asked count, nothing is modulated; "continue" runs phase 1 on."""
    counts = {"cats": 3, "dogs": 2}
    monkeypatch.setattr(pipeline, "build_layouts", planted_layouts(counts))
    result = engine.generate(GenerationRequest(prompt="Three cats chasing two dogs", steps=6, counts=counts,
                                               numina_overrides={"reference_step": 3, "mode": "engine"}),
                             progress=False)
    numina = result.report["numina"]
    assert numina["regenerated"] is False and numina["phase2"] == "phase1_continued"
    assert numina["counts_matched"] is True and numina["not_reached"] == {}
    assert numina["message"].startswith("counts already match in every frame")
    assert numina["behaviours"]["mode"] == "engine" and numina["behaviours"]["when_nothing_to_modulate"] == "continue"
    assert result.frames.shape == (9, 128, 128, 3)


def test_nothing_to_modulate_regenerates_plain_wan_bit_exactly(engine, monkeypatch):
    """Authors' rule: nothing to modulate -> plain Wan2.1 from the noise, equal to a --no-numina run."""
    counts = {"cats": 3, "dogs": 2}
    plain = engine.generate(GenerationRequest(prompt="Three cats chasing two dogs", steps=6, seed=5, numina=False,
                                              numina_overrides={"mode": "authors"}), progress=False)
    monkeypatch.setattr(pipeline, "build_layouts", planted_layouts(counts))
    result = engine.generate(GenerationRequest(prompt="Three cats chasing two dogs", steps=6, seed=5, counts=counts,
                                               numina_overrides={"reference_step": 3, "easycache_tau": 10.0,
                                                                 "mode": "authors"}),
                             progress=False)
    numina = result.report["numina"]
    assert numina["phase2"] == "plain_regenerated" and numina["behaviours"]["mode"] == "authors"
    assert plain.report["sigma_grid"] == numina["behaviours"]["sigma_grid"] == "wan"
    assert torch.equal(result.frames, plain.frames)


@pytest.mark.parametrize("mode", ["engine", "authors"])
def test_whole_frame_instance_is_planned_and_regenerated_issue_17(engine, monkeypatch, mode):
    """The issue-17 repro: one instance covering every frame, target 5. The plan adds instances and
    phase 2 regenerates; the message never claims matching counts, and says where the target failed."""
    monkeypatch.setattr(pipeline, "build_layouts", planted_layouts(whole_frame=True))
    result = engine.generate(GenerationRequest(prompt="Five cats sleeping", steps=6, counts={"cats": 5},
                                               numina_overrides={"reference_step": 3, "mode": mode,
                                                                 "circle_radius": 1}), progress=False)
    numina = result.report["numina"]
    assert numina["regenerated"] is True and numina["phase2"] == "modulated"
    assert numina["counts_matched"] is False and "already match" not in numina["message"]
    frames = numina["refinement"]["cats"]["frames"]
    if mode == "engine":
        assert all(f["refined_count"] == 5 and f["status"] == "refined" for f in frames)
        assert numina["not_reached"] == {} and numina["message"] == "phase 2 regenerated with the layout bias"
    else:   # the authors' template is the whole frame: every addition erases the previous one
        assert all(f["refined_count"] == 1 and f["status"] == "instances_erased" for f in frames)
        assert len(numina["not_reached"]["cats"]) == len(frames) and "erased" in numina["message"]


def test_report_message_for_targets_that_cannot_be_planned():
    from numina_engine.numina.refinement import refine_layout, summarize_refinement

    config = NuminaConfig(mode="engine", circle_radius=3)
    empty = torch.zeros(2, 5, 5, dtype=torch.int32)                 # nothing found, the disc does not fit
    summaries = {"cats": summarize_refinement(empty, refine_layout(empty, 2, config), 2)}
    message = pipeline.outcome_message(summaries, regenerated=False, when_nothing_to_modulate="continue")
    assert "already match" not in message and "no_instance" not in message
    assert "no instance found" in message and "[0, 1]" in message and message.endswith("phase 1 ran on to the end")
    assert pipeline.not_reached_frames(summaries)["cats"][0]["status"] == "no_instance_found"


def keep_the_reference(reference, refined):
    """A refined layout equal to the reference: nothing to add or remove."""
    return {noun: labels.clone() for noun, labels in reference.items()}


def plant_an_added_instance(reference, refined):
    """The reference with a 2x2-token added instance in every frame: phase 2 must regenerate."""
    edited = keep_the_reference(reference, refined)
    for labels in edited.values():
        labels[:, 1:3, 1:3] = LABEL_ADDED_BASE
    return edited


TWO_PHASE = GenerationRequest(prompt="Three cats chasing two dogs", steps=8, counts={"cats": 3, "dogs": 2},
                              numina_overrides={"reference_step": 3, "modulation_center": -16.0})


def test_a_planted_layout_edit_regenerates_with_the_modulated_steps(engine):
    """delta(t) = 0.25 (4 - 3 tanh(t + 16)) is above its floor 0.25 while tanh(t + 16) < 1 in float64:
    steps 0-3 of 8 (tanh(20) rounds to 1)."""
    edited = pipeline.generate(engine.model, TWO_PHASE, progress=False, edit_layout=plant_an_added_instance)
    numina = edited.report["numina"]
    assert numina["regenerated"] is True and numina["message"] == "phase 2 regenerated with the layout bias"
    assert numina["phase2_modulated_steps"] == 4
    assert all(bool((labels[:, 1:3, 1:3] == LABEL_ADDED_BASE).all()) for labels in edited.layout.refined.values())
    unedited = pipeline.generate(engine.model, TWO_PHASE, progress=False, edit_layout=keep_the_reference)
    assert not torch.equal(edited.frames, unedited.frames)


def test_counts_already_right_regenerate_nothing(engine):
    """When the edited refined layout equals the reference, nothing is modulated and (engine mode)
    phase 1 runs on to the end: the same video as a plain run of the same seed and mode (EasyCache
    off: phase 1 then computes every step)."""
    request = GenerationRequest(prompt="Three cats chasing two dogs", steps=6, counts={"cats": 3, "dogs": 2},
                                numina_overrides={"reference_step": 3, "easycache_enabled": False, "mode": "engine"})
    result = pipeline.generate(engine.model, request, progress=False, edit_layout=keep_the_reference)
    numina = result.report["numina"]
    assert numina["regenerated"] is False and numina["phase2"] == "phase1_continued"
    assert numina["layout_edited"] is True
    assert numina["message"] == "the edited layouts have nothing to modulate: phase 1 ran on to the end"
    assert numina["phase2_modulated_steps"] == 0
    plain = engine.generate(GenerationRequest(prompt=request.prompt, steps=6, numina=False,
                                              numina_overrides={"mode": "engine"}), progress=False)
    assert torch.equal(result.frames, plain.frames)


def test_checkpoint_behaviour_settings_are_engine_mode_choices():
    """The demo checkpoint names layout_instances="focus_clusters" (its engine-mode choice): engine mode takes it,
    authors mode keeps the authors' MeanShift rule, and a request's own setting wins in either mode."""
    from numina_engine import Engine
    from numina_engine.engine.pipeline import numina_config_for

    model = Engine.load(device="cpu").model
    assert model.defaults.numina["layout_instances"] == "focus_clusters"

    def config(**overrides):
        request = GenerationRequest(prompt="Three apples.", counts={"apples": 3}, numina_overrides=overrides)
        return numina_config_for(model, request, 20)

    assert config(mode="engine").layout_instances == "focus_clusters"
    assert config().layout_instances == "focus_clusters"                 # the default mode is engine
    authors = config(mode="authors")
    assert authors.layout_instances == "meanshift"
    assert authors.reference_layer == model.defaults.numina["reference_layer"]   # spatial settings still apply
    assert config(mode="authors", layout_instances="focus_clusters").layout_instances == "focus_clusters"
