"""bench/layout_settings.py's offline sweep and the pieces of bench/numina_stages.py it reuses."""
from __future__ import annotations

import math

import torch

from bench.layout_settings import Scorer, best_row, current_settings, row_for, sweep_probe, totals
from bench.numina_stages import instance_scores, match_instances
from numina_engine.numina.config import NuminaConfig
from numina_engine.numina.layout import (assign_instances, build_layouts, cluster_proposals, focus_masks,
                                         layout_features)

CONFIG = NuminaConfig(mode="engine", cross_attn_peak_ratio=0.3, dbscan_eps=1.5, dbscan_min_samples=3)


def match_by_loops(found: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int]:
    """The pairwise-mask definition of numina_stages.match_instances (IoU >= 0.5, greedy by IoU)."""
    found_ids = [int(i) for i in found.unique() if i > 0]
    true_ids = [int(i) for i in truth.unique() if i > 0]
    pairs = []
    for a in found_ids:
        for b in true_ids:
            inter = ((found == a) & (truth == b)).sum().item()
            iou = inter / max(1, ((found == a) | (truth == b)).sum().item())
            if iou >= 0.5:
                pairs.append((iou, a, b))
    used_a, used_b = set(), set()
    for _, a, b in sorted(pairs, reverse=True):
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
    return len(used_a), len(found_ids), len(true_ids)


def random_labels(h: int, w: int, k: int, g: torch.Generator) -> torch.Tensor:
    """int32 [h, w]: up to k random rectangles labelled 1..k (later ones over earlier ones)."""
    labels = torch.zeros(h, w, dtype=torch.int32)
    for i in range(1, k + 1):
        y, x = (int(torch.randint(0, s - 1, (1,), generator=g)) for s in (h, w))
        dy, dx = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(2))
        labels[y:y + dy, x:x + dx] = i
    return labels


def test_match_instances_equals_pairwise_masks():
    g = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(200):
        h, w = int(torch.randint(3, 13, (1,), generator=g)), int(torch.randint(3, 13, (1,), generator=g))
        truth = random_labels(h, w, int(torch.randint(0, 5, (1,), generator=g)), g)
        # found: the truth shifted / grown a little, plus random rectangles, relabelled
        found = torch.roll(truth, shifts=int(torch.randint(-1, 2, (1,), generator=g)), dims=1) * 3
        found = torch.where(random_labels(h, w, 2, g) > 0, 50 + random_labels(h, w, 2, g), found)
        ours = match_instances(found, truth)
        assert ours == match_by_loops(found, truth), trial
        hits += ours[0] > 0
    assert hits > 20                    # the trials do contain matches


def synthetic_cache(g: torch.Generator, frames: int = 2, h: int = 6, w: int = 7, nouns=("apples", "boxes")) -> dict:
    """One prompt's cache as layout_settings.collect writes it, from random attention and labels."""
    n = h * w
    q, k = (torch.randn(frames, n, 6, generator=g) for _ in range(2))
    self_maps = torch.softmax(q @ k.mT * (3.0 / math.sqrt(6)), dim=-1)
    maps = torch.softmax(torch.randn(2 * len(nouns), frames, n, generator=g) * 2.0, dim=-1)
    truth = {noun: torch.stack([random_labels(h, w, 3, g) for _ in range(frames)]) for noun in nouns}
    return {"prompt": "p", "target": dict.fromkeys(nouns, 2), "nouns": list(nouns), "grid": (frames, h, w),
            "features": {(8, 6): layout_features(self_maps, (h, w))}, "maps": {(8, 6): maps}, "truth": truth,
            "self_maps": self_maps}


def test_pieces_compose_to_build_layouts():
    g = torch.Generator().manual_seed(1)
    cache = synthetic_cache(g)
    maps = cache["maps"][(8, 6)][:2]
    for config in (CONFIG, CONFIG.with_overrides(meanshift_bandwidth=0.3, semantic_overlap_tau=0.5)):
        clusters = cluster_proposals(cache["features"][(8, 6)], config)
        focus = focus_masks(maps, (6, 7), config).flatten(-2)
        ours = assign_instances(clusters, focus, config.semantic_overlap_tau).reshape(2, 2, 6, 7).to(torch.int32)
        assert torch.equal(ours, build_layouts(cache["self_maps"], maps, (6, 7), config))


def test_sweep_row_of_the_current_settings_is_numina_stages_score():
    """The sweep's row for a config's own settings scores what build_layouts gives with that config,
    as numina_stages.instance_scores counts it, in both token scopes."""
    g = torch.Generator().manual_seed(2)
    caches = [synthetic_cache(g) for _ in range(3)]
    grid = {"bandwidth_rules": (("quantile", 0.2), ("bandwidth", 0.3)), "peak_ratios": (0.3, 0.6),
            "eps": (1.5,), "min_samples": (1, 3), "taus": (0.2, 0.5)}
    for s, scope in enumerate(("noun", "phrase")):
        rows = sweep_probe(caches, (8, 6), scope, CONFIG, Scorer(), grid)
        assert len(rows) == 2 * 2 * 1 * 2 * 2 + 2 * 1 * 2
        for config in (CONFIG, CONFIG.with_overrides(meanshift_bandwidth=0.3, cross_attn_peak_ratio=0.6,
                                                     dbscan_min_samples=1, semantic_overlap_tau=0.5),
                       CONFIG.with_overrides(layout_instances="focus_clusters", cross_attn_peak_ratio=0.6)):
            sums = dict.fromkeys(("matched", "found", "true", "count_exact", "frames"), 0)
            for cache in caches:
                labels = build_layouts(cache["self_maps"], cache["maps"][(8, 6)][2 * s:2 * s + 2], (6, 7), config)
                for name, value in instance_scores(labels, cache["truth"], cache["nouns"]).items():
                    sums[name] += value
            row = row_for(rows, current_settings(config))
            assert row["found"] == sums["found"] and row["true"] == sums["true"]
            assert math.isclose(row["recall"], round(sums["matched"] / sums["true"], 4))
            assert math.isclose(row["count_exact"], round(sums["count_exact"] / sums["frames"], 4))
        assert len({(r["found"], r["recall"]) for r in rows}) > 1      # the settings do change the layouts


def test_totals_and_the_choice_rule():
    scores = [(1, 2, 1), (0, 0, 0), (2, 2, 3)]
    t = totals(scores)
    assert (t["recall"], t["precision"], t["found"], t["true"]) == (0.75, 0.75, 4, 4)
    assert t["f1"] == 0.75 and t["count_exact"] == round(1 / 3, 4)
    assert totals([(0, 0, 2)])["f1"] == 0.0
    rows = [{"f1": 0.5, "count_exact": 0.2, "recall": 0.9}, {"f1": 0.5, "count_exact": 0.4, "recall": 0.1},
            {"f1": 0.4, "count_exact": 0.9, "recall": 0.9}]
    assert best_row(rows) is rows[1]


def test_e2e_paired_statistics():
    from bench.layout_settings_e2e import paired

    videos = [{"index": i, "seed": s, "plain": {"accuracy": p}, "x": {"accuracy": x}}
              for i, s, p, x in [(0, 0, 0.5, 1.0), (1, 0, 0.5, 0.0), (0, 1, 0.0, 0.5), (1, 1, 1.0, 1.0)]]
    got = paired(videos, "x")
    assert got["per_seed"] == {"0": 0.5, "1": 0.75} and got["mean"] == 0.625
    assert got["paired_difference_to_plain"] == 0.125          # prompt 0: +0.5, prompt 1: -0.25
    assert (got["prompts_better"], got["prompts_worse"]) == (1, 1)


def test_settings_config_round_trips_through_current_settings():
    from bench.layout_settings import settings_config

    for config in (CONFIG, CONFIG.with_overrides(meanshift_bandwidth=0.3, semantic_overlap_tau=0.5),
                   CONFIG.with_overrides(layout_instances="focus_clusters", cross_attn_peak_ratio=0.6)):
        row = current_settings(config)
        assert current_settings(settings_config(NuminaConfig(mode="engine"), row)) == row


def test_diagnosis_figure_draws_every_noun(tmp_path):
    from PIL import Image

    from bench.layout_settings import diagnosis_figure

    cache = synthetic_cache(torch.Generator().manual_seed(3))
    configs = {"current": CONFIG, "focus": CONFIG.with_overrides(layout_instances="focus_clusters")}
    path = diagnosis_figure(cache, (8, 6), configs, tmp_path / "d.png")
    with Image.open(path) as picture:       # 2 nouns x (truth, map, 3 meanshift panels, 2 focus panels)
        assert picture.size[0] > 7 * 6 * 8 and picture.size[1] > 2 * 7 * 8


def test_e2e_merge_joins_seeds(tmp_path):
    import json

    from bench.layout_settings_e2e import MODES, merge
    from bench.results_file import write_results

    candidates = {"current": {}, "c": {"cross_attn_peak_ratio": 0.5}}
    paths = []
    for seed in (0, 1):
        videos = [{"index": i, "seed": seed, "plain": {"accuracy": 0.5},
                   **{f"{m}@{n}": {"accuracy": 1.0 if n == "c" else 0.5 * seed} for m in MODES for n in candidates}}
                  for i in range(2)]
        summary = {"plain": {}, **{n: {"overrides": o} for n, o in candidates.items()}}
        paths.append(write_results(tmp_path / f"s{seed}.json", "bench/layout_settings_e2e.py",
                                   {"prompts": 2, "seconds": 1.0, "summary": summary, "videos": videos}, argv=[]))
    merge(paths, tmp_path / "all.json")
    merged = json.loads((tmp_path / "all.json").read_text())["results"]
    assert merged["noise_seeds"] == [0, 1] and len(merged["videos"]) == 4
    assert merged["summary"]["c"]["engine-noun vs current"]["paired_difference_to_current"] == 0.75
    assert merged["summary"]["current"]["engine-noun"]["per_seed"] == {"0": 0.0, "1": 0.5}


def test_e2e_merge_refuses_files_of_other_runs(tmp_path):
    """Files of another commit, checkpoint or candidate set are not seeds of one run: refused, the field named."""
    import json

    import pytest

    from bench.layout_settings_e2e import MODES, merge

    def write(name: str, seed: int, commit: str = "c", checkpoint: str = "x", ratio: float = 0.5):
        summary = {"plain": {}, "current": {"overrides": {}}, "c": {"overrides": {"cross_attn_peak_ratio": ratio}}}
        videos = [{"index": 0, "seed": seed, "plain": {"accuracy": 0.5},
                   **{f"{m}@{n}": {"accuracy": 0.5} for m in MODES for n in ("current", "c")}}]
        (tmp_path / name).write_text(json.dumps({
            "script": "bench/layout_settings_e2e.py", "argv": [], "device": "cpu", "date": "d", "git_commit": commit,
            "checkpoint": checkpoint, "results": {"validation_seed": 1, "prompts": 1, "seconds": 1.0,
                                                  "summary": summary, "videos": videos}}))
        return tmp_path / name

    same = write("s0.json", 0)
    for changed, field in ((dict(commit="d"), "git_commit"), (dict(checkpoint="y"), "checkpoint"),
                           (dict(ratio=0.6), "candidates")):
        other = write("s1.json", 1, **changed)
        with pytest.raises(SystemExit, match=f"differ in {field}") as refused:
            merge([same, other], tmp_path / "all.json")
        assert str(same) in str(refused.value) and str(other) in str(refused.value)
    assert not (tmp_path / "all.json").exists()
    merge([same, write("s1.json", 1)], tmp_path / "all.json")
    assert json.loads((tmp_path / "all.json").read_text())["results"]["noise_seeds"] == [0, 1]
