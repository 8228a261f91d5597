"""Plain vs NUMINA, side by side: per seed, mean and spread over seeds, and the paired per-prompt difference.

Inputs are what `numina-engine eval` wrote: a folder with seed<k>/eval_results.json (a mode of the batch
layout), a folder with eval_results.json, or the file itself. Seeds are paired by name, prompts by index;
only prompts evaluated on both sides are paired. Spread is the sample standard deviation (0 for one value).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import UserInputError
from .evaluate import RESULTS_NAME


def load_results(path: str | Path) -> dict[str, dict]:
    """{seed label: authors'-format results} from a results file, a folder holding one, or seed<k>/ folders."""
    path = Path(path)
    if path.is_file():
        files = {path.parent.name: path}
    elif (path / RESULTS_NAME).is_file():
        files = {path.name: path / RESULTS_NAME}
    else:
        files = {sub.name: sub / RESULTS_NAME for sub in sorted(path.glob("seed*")) if (sub / RESULTS_NAME).is_file()}
    if not files:
        raise UserInputError(f"{path} holds no {RESULTS_NAME} (nor seed<k>/{RESULTS_NAME}): run "
                             f"`numina-engine eval` on it first")
    loaded = {}
    for label, file in files.items():
        try:
            loaded[label] = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserInputError(f"{file} is not valid JSON ({err.msg}, line {err.lineno})") from None
    return loaded


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def compare_results(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Paired statistics of B against A (differences are B - A).

    Per seed: both overall accuracies (each side over all its prompts, as eval reports them), and the mean
    paired difference over the prompts both evaluated. Over seeds: mean and spread of each side's accuracy.
    Per prompt: the difference averaged over the seeds both sides have it for; `better`/`worse`/`same` count
    prompts whose mean difference is > 0, < 0, == 0.
    """
    seeds = [label for label in a if label in b]
    if not seeds:
        raise UserInputError(f"no seed in common: A has {sorted(a)}, B has {sorted(b)}")
    per_seed, differences = {}, {}
    for label in seeds:
        acc_a = {e["index"]: e["prompt_accuracy"] for e in a[label]["per_prompt"]}
        acc_b = {e["index"]: e["prompt_accuracy"] for e in b[label]["per_prompt"]}
        paired = sorted(set(acc_a) & set(acc_b))
        for index in paired:
            differences.setdefault(index, []).append(acc_b[index] - acc_a[index])
        per_seed[label] = {"a": a[label]["overall_accuracy"], "b": b[label]["overall_accuracy"],
                           "paired_prompts": len(paired),
                           "paired_difference": (statistics.fmean(acc_b[i] - acc_a[i] for i in paired)
                                                 if paired else None)}
    if not differences:
        raise UserInputError("no prompt was evaluated on both sides: nothing to pair")
    prompt_diff = {index: statistics.fmean(d) for index, d in sorted(differences.items())}
    means_a = [s["a"] for s in per_seed.values()]
    means_b = [s["b"] for s in per_seed.values()]
    diffs = list(prompt_diff.values())
    return {
        "seeds": per_seed,
        "a": {"mean": statistics.fmean(means_a), "spread": _spread(means_a)},
        "b": {"mean": statistics.fmean(means_b), "spread": _spread(means_b)},
        "paired": {"prompts": len(diffs), "mean_difference": statistics.fmean(diffs),
                   "spread": _spread(diffs), "better": sum(d > 0 for d in diffs),
                   "worse": sum(d < 0 for d in diffs), "same": sum(d == 0 for d in diffs)},
        "per_prompt_difference": {str(i): d for i, d in prompt_diff.items()},
    }


def format_table(comparison: dict, name_a: str, name_b: str) -> str:
    """Markdown: one row per seed, then mean and spread, then the paired summary line."""
    lines = [f"| seed | {name_a} | {name_b} | {name_b} - {name_a} (paired) |", "| --- | ---: | ---: | ---: |"]
    for label, s in comparison["seeds"].items():
        diff = "-" if s["paired_difference"] is None else f"{s['paired_difference']:+.3f}"
        lines.append(f"| {label} | {s['a']:.3f} | {s['b']:.3f} | {diff} ({s['paired_prompts']} prompts) |")
    a, b, p = comparison["a"], comparison["b"], comparison["paired"]
    lines.append(f"| mean | {a['mean']:.3f} | {b['mean']:.3f} | {p['mean_difference']:+.3f} (per prompt) |")
    lines.append(f"| spread (sd over seeds) | {a['spread']:.3f} | {b['spread']:.3f} | |")
    lines += ["", f"Per prompt (difference averaged over seeds, {p['prompts']} prompts): mean "
                  f"{p['mean_difference']:+.3f}, sd {p['spread']:.3f}; {name_b} better on {p['better']}, "
                  f"worse on {p['worse']}, same on {p['same']}."]
    return "\n".join(lines)
