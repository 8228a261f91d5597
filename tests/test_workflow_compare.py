"""`compare`: per-seed table, mean and spread over seeds, paired per-prompt differences, better/worse counts."""
import json
import statistics

import pytest

from numina_engine.cli import main
from numina_engine.workflow.compare import compare_results, load_results


def _results(accuracies: dict[int, float]) -> dict:
    """Authors'-format results with the given prompt accuracies (overall: their mean)."""
    return {"overall_accuracy": statistics.fmean(accuracies.values()), "num_prompts": len(accuracies),
            "box_threshold": 0.32, "text_threshold": 0.25,
            "per_prompt": [{"index": i, "prompt": f"p{i}", "video": f"{i:03d}_p.mp4", "targets": {"x": 1},
                            "num_frames": 1, "per_noun": {"x": [1]}, "prompt_accuracy": a}
                           for i, a in accuracies.items()]}


PLAIN = {"seed0": _results({1: 0.5, 2: 0.25, 3: 1.0}), "seed1": _results({1: 0.25, 2: 0.5, 3: 1.0})}
NUMINA = {"seed0": _results({1: 0.75, 2: 0.25, 3: 0.5}), "seed1": _results({1: 0.5, 2: 0.75})}   # 3 missing


def test_paired_statistics_by_hand():
    comparison = compare_results(PLAIN, NUMINA)
    seed0, seed1 = comparison["seeds"]["seed0"], comparison["seeds"]["seed1"]
    assert (seed0["a"], seed0["b"], seed0["paired_prompts"]) == (pytest.approx(1.75 / 3), 0.5, 3)
    assert seed0["paired_difference"] == pytest.approx((0.25 + 0.0 - 0.5) / 3)
    assert (seed1["paired_prompts"], seed1["paired_difference"]) == (2, pytest.approx(0.25))
    assert comparison["a"]["mean"] == pytest.approx((1.75 / 3 + 1.75 / 3) / 2)
    assert comparison["a"]["spread"] == 0.0
    assert comparison["b"]["mean"] == pytest.approx((0.5 + 0.625) / 2)
    assert comparison["b"]["spread"] == pytest.approx(statistics.stdev([0.5, 0.625]))
    # per prompt, averaged over the seeds both have: 1: (0.25 + 0.25) / 2, 2: (0 + 0.25) / 2, 3: -0.5 (seed 0 only)
    assert comparison["per_prompt_difference"] == {"1": 0.25, "2": 0.125, "3": -0.5}
    paired = comparison["paired"]
    assert (paired["prompts"], paired["better"], paired["worse"], paired["same"]) == (3, 2, 1, 0)
    assert paired["mean_difference"] == pytest.approx((0.25 + 0.125 - 0.5) / 3)
    assert paired["spread"] == pytest.approx(statistics.stdev([0.25, 0.125, -0.5]))


def _write(root, results):
    for seed, payload in results.items():
        (root / seed).mkdir(parents=True)
        (root / seed / "eval_results.json").write_text(json.dumps(payload))


def test_compare_cli_table_and_json(tmp_path, capsys):
    _write(tmp_path / "plain", PLAIN)
    _write(tmp_path / "numina", NUMINA)
    assert load_results(tmp_path / "plain") == PLAIN
    out = tmp_path / "comparison.json"
    assert main(["compare", str(tmp_path / "plain"), str(tmp_path / "numina"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| seed | plain | numina | numina - plain (paired) |" in table
    assert "| seed1 | 0.583 | 0.625 | +0.250 (2 prompts) |" in table
    assert "| mean | 0.583 | 0.562 | -0.042 (per prompt) |" in table     # paired: seed1 lacks prompt 3
    assert "numina better on 2, worse on 1, same on 0." in table
    saved = json.loads(out.read_text())
    assert saved["names"] == ["plain", "numina"] and saved["paired"]["better"] == 2


def test_compare_without_results_is_a_user_error(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    _write(tmp_path / "b", NUMINA)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "run `numina-engine eval` on it first" in capsys.readouterr().err
    _write(tmp_path / "c", {"seed7": PLAIN["seed0"]})
    assert main(["compare", str(tmp_path / "c"), str(tmp_path / "b")]) == 2
    assert "no seed in common" in capsys.readouterr().err
