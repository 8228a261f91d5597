"""README's results tables, rendered from the committed results files under docs/results/.

README marks each table with a pair of HTML comments; this script replaces what lies between them:

    <!-- results:e2e -->
    ... (rendered: never edit by hand)
    <!-- /results:e2e -->

Each table names the file it comes from and the device, date and commit inside it. A table whose
results file is not committed yet renders as the command that makes it.

    python tools/render_readme_tables.py            # rewrite README.md's tables
    python tools/render_readme_tables.py --check    # exit 1 if README.md differs (CI: tests/test_readme_tables.py)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _load(pattern: str) -> list[tuple[str, dict]]:
    """(path relative to the repository, content) of every results file matching `pattern`, newest date first."""
    files = [(str(path.relative_to(REPO)), json.loads(path.read_text(encoding="utf-8")))
             for path in sorted(RESULTS.glob(pattern))]
    return sorted(files, key=lambda item: item[1].get("date") or "", reverse=True)


def _source(path: str, data: dict) -> str:
    commit = (data.get("git_commit") or "")[:10] or "not recorded"
    date = data.get("date") or "not recorded"
    line = f"Source: `{path}` (`{data['script']}`), {data['device']}, date {date}, commit {commit}"
    if data.get("git_dirty"):
        line += " (with uncommitted changes)"
    if data.get("provenance_note"):
        line += f". Note: {data['provenance_note'].rstrip('.')}"
    return line + "."


def _missing(command: str) -> str:
    return f"Not measured on the current code yet: `{command}`, then `python tools/render_readme_tables.py`."


def render_cli_threads() -> str:
    files = _load("cli_threads_*.json")
    if not files:
        return _missing("python bench/cli_threads.py --json docs/results/cli_threads_cpu.json")
    path, data = files[0]
    results = data["results"]
    lines = ["| OMP_NUM_THREADS | wall time of each run | median |", "| ---: | --- | ---: |"]
    for threads, median in results["median_wall_s"].items():
        walls = ", ".join(f"{r['wall_s']:.1f} s" for r in results["runs"] if str(r["threads"]) == threads)
        lines.append(f"| {threads} | {walls} | {median:.1f} s |")
    same = "the same frames" if results["same_frames_for_all"] else "DIFFERENT frames"
    load = (f"; 1-minute load average before the first run {results['load_average_before'][0]:.1f}"
            if "load_average_before" in results else "")
    return "\n".join(lines + ["", f"Runs alternated ({results['command']}), {same} at every thread count, "
                              f"{results['cpu_count']} cores{load}.", _source(path, data)])


def _e2e_phase_table(runs: list[tuple[str, dict]]) -> list[str]:
    """One row per (label, run) of bench/e2e.py: seconds per phase, total, peak allocated memory; an
    offload column only when some run has an "offload" phase (offloaded runs)."""
    offload = any("offload" in run["phases_s"] for _, run in runs)
    lines = ["| run |" + (" offload |" if offload else "") + " text | phase 1 | layout | preview | phase 2 / denoising "
             "| decode | total | peak allocated |", "| --- |" + " ---: |" * (8 + offload)]
    for label, run in runs:
        p = run["phases_s"]
        cells = ([p.get("offload", 0)] if offload else []) + [
            p.get("text encoding", 0), p.get("phase 1", 0), p.get("layout", 0), p.get("preview decode", 0),
            p.get("phase 2", p.get("denoising", 0)), p.get("decode", 0), run["total_s"]]
        lines.append(f"| {label} | " + " | ".join(f"{c:.2f} s" for c in cells) + f" | {_e2e_peak(run)} |")
    return lines


def _e2e_peak(run: dict) -> str:
    allocated = run.get("peak_gpu_memory_gib", {}).get("allocated")
    return "-" if allocated is None else f"{allocated:.1f} GiB"


def _e2e_summary(results: dict) -> str:
    """The sentence under the phase table, on the first (or only) configuration; parts a run did not
    measure (--skip-graphs-off: no graphs-off ratio; another shape than 1.3B 832*480x81: no authors' ratio)
    are left out."""
    settings = [f"{results['steps']} steps"] + ([f"Wan2.1-{results['config']}"] if "config" in results else []) + [
        results["size"], f"{results['frames']} frames",
        f"forced modulation {'on' if results['forced_modulation'] else 'off'}"]
    for key, flag, default in (("attention", "--attention", "bf16"), ("cache_steps", "--cache-steps", "off"),
                               ("offload", "--offload", "none")):
        if results.get(key, default) != default:
            settings.append(f"{flag} {results[key]}")
    if len(results.get("configurations_planned", [])) > 1:
        settings.append(f"configuration {results['baseline']}")
    parts = [f"**NUMINA / plain = {results['numina_over_plain']:.3f}** (target <= 1.3)"]
    numina = results["runs"]["NUMINA"].get("numina", {})
    if "phase1_steps_computed" in numina:
        parts.append(f"phase 1 computed {numina['phase1_steps_computed']} passes and reused "
                     f"{numina['phase1_steps_reused']}, phase 2 modulated {numina['phase2_modulated_steps']} steps")
    if "graphs_off_over_on_step" in results:
        parts.append(f"CUDA graphs off / on per plain step {results['graphs_off_over_on_step']:.3f}")
    authors = results.get("authors_estimate_over_numina_50_steps")
    if authors:
        parts.append(f"the authors' ~{authors['authors_estimate_s']:.0f} s estimate / this NUMINA run "
                     f"({authors['numina_s_is']}) = {authors['ratio']:.2f}")
    return ", ".join(settings) + ": " + "; ".join(parts) + "."


def _e2e_steps_reused(run: dict) -> str:
    cache = run.get("step_cache", {})
    return ", ".join(f"{phase} {entry['steps_reused']}" for phase, entry in cache.items() if isinstance(entry, dict))


def _e2e_configurations(results: dict) -> list[str]:
    """The configurations side by side: totals, ratios to the first configuration, peak allocated memory;
    then their notes, the steps EasyCache reused, and the configurations planned but not run."""
    configurations, baseline = results["configurations"], results["baseline"]
    lines = [f"| configuration | attention | cache steps | offload | plain total | NUMINA total | NUMINA / plain "
             f"| vs {baseline}: plain, NUMINA | peak allocated, plain / NUMINA |", "| --- | --- | --- | --- |" + " ---: |" * 5]
    for name, entry in configurations.items():
        plain, numina = entry["runs"]["plain"], entry["runs"]["NUMINA"]
        lines.append(f"| {name} | {entry['attention']} | {entry['cache_steps']} | {entry['offload']} "
                     f"| {plain['total_s']:.2f} s | {numina['total_s']:.2f} s | {entry['numina_over_plain']:.3f} "
                     f"| {entry['plain_over_baseline']:.3f}, {entry['numina_over_baseline']:.3f} "
                     f"| {_e2e_peak(plain)} / {_e2e_peak(numina)} |")
    notes = [f"{name}: {entry['note'].rstrip('.')}." for name, entry in configurations.items() if entry.get("note")]
    notes += [f"{name}: steps EasyCache reused, plain: {_e2e_steps_reused(entry['runs']['plain'])}; NUMINA: "
              f"{_e2e_steps_reused(entry['runs']['NUMINA'])} (of {results['steps']})."
              for name, entry in configurations.items() if entry["cache_steps"] != "off"]
    if results.get("cache_steps_note"):
        notes.append(f"Step caching: {results['cache_steps_note'].rstrip('.')}.")
    missing = [name for name in results.get("configurations_planned", []) if name not in configurations]
    if missing:
        notes.append(f"Planned but not measured (the run stopped before them): {', '.join(missing)}.")
    return lines + ([""] + notes if notes else [])


def render_e2e() -> str:
    files = _load("e2e_*.json")
    if not files:
        return _missing("python -m bench.e2e --steps 50 --force-modulation --configs bf16 cache-all fp8 offload-full "
                        "--json docs/results/e2e_<gpu>.json")
    blocks = []
    for path, data in files:
        results = data["results"]
        # a file of several configurations (planned: a run stopped early holds fewer) gets the side-by-side table
        configurations = results.get("configurations") if len(results.get("configurations_planned", [])) > 1 else None
        if configurations:          # the first configuration's runs (its graphs-off run too), then the others'
            baseline = results["baseline"]
            runs = [(f"{baseline}: {name}", run) for name, run in results["runs"].items()]
            runs += [(f"{config}: {name}", run) for config, entry in configurations.items() if config != baseline
                     for name, run in entry["runs"].items()]
        else:
            runs = list(results["runs"].items())
        lines = _e2e_phase_table(runs) + ["", _e2e_summary(results)]
        if configurations:
            lines += [""] + _e2e_configurations(results) + [""]
        blocks.append("\n".join(lines + [_source(path, data)]))
    return "\n\n".join(blocks)


def render_modulated_cross_attention() -> str:
    files = _load("modulated_cross_attention_*.json")
    if not files:
        return _missing("python -m bench.modulated_cross_attention --json "
                        "docs/results/modulated_cross_attention_<gpu>.json")
    blocks = []
    for path, data in files:
        rows = data["results"]["rows"]
        plain = next(row for row in rows if row["call"] == "plain SDPA")
        lines = ["| call | modulated share of the queries | CUDA-graph median | x plain SDPA | relative error |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for row in rows:
            error = f"{row['relative_error']:.1e}" if "relative_error" in row else ""
            lines.append(f"| {row['call']} | {row['modulated_share']:.1%} | {row['graph_ms']:.3f} ms | "
                         f"{row['graph_ms'] / plain['graph_ms']:.2f} | {error} |")
        blocks.append("\n".join(lines + ["", _source(path, data)]))
    return "\n\n".join(blocks)


def render_kernels() -> str:
    files = _load("kernels_*.json")
    if not files:
        return _missing("python -m bench.kernels_report --json docs/results/kernels_<gpu>.json")
    blocks = []
    for path, data in files:
        results = data["results"]
        lines = ["| group | case | B | median | x plain SDPA | target |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for row in results["timings"]:
            target = f"<= {row['target_x_plain']:g}x" if row["target_x_plain"] is not None else ""
            lines.append(f"| {row['group']} | {row['case']} | {row['batch']} | {row['ms']:.3f} ms | "
                         f"{row['x_plain']:.2f} | {target} |")
        lines += ["", "| relative error (bf16, real shape) | B | value |", "| --- | ---: | ---: |"]
        lines += [f"| {row['what']} | {row['batch']} | {row['relative_error']:.1e} |"
                  for row in results["relative_errors"]]
        blocks.append("\n".join(lines + ["", _source(path, data)]))
    return "\n\n".join(blocks)


def render_dit_forward() -> str:
    files = _load("dit_forward_*.json")
    if not files:
        return _missing("python -m bench.dit_forward --json docs/results/dit_forward_<gpu>.json")
    blocks = []
    for path, data in files:
        forward = data["results"]["forward"]
        lines = ["| quantity | value |", "| --- | ---: |"]
        for key, value in forward.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {key} | {value:.4g} |")
        blocks.append("\n".join(lines + ["", _source(path, data)]))
    return "\n\n".join(blocks)


DEMO_MODE_LABELS = {"plain": "plain", "numina": "NUMINA as shipped", "numina-noun": "NUMINA, authors mode, noun scope",
                    "numina-phrase": "NUMINA, authors mode, phrase scope", "engine-noun": "NUMINA, engine mode, noun scope",
                    "engine-phrase": "NUMINA, engine mode, phrase scope",
                    "oracle-noun": "NUMINA with oracle layouts, authors mode, noun scope",
                    "oracle-phrase": "NUMINA with oracle layouts, authors mode, phrase scope"}


def render_countbench_demo() -> str:
    files = _load("countbench_demo_*.json")
    if not files:
        return _missing("python bench/countbench_demo.py --seeds 0 1 2 --device cuda --out DIR")
    path, data = files[0]
    results = data["results"]
    seeds = results["noise_seeds"]
    lines = [f"{results['prompts']} unseen prompts x {len(seeds)} noise seeds, frame-wise counting accuracy "
             f"(the world's exact counter).", "",
             "| mode | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean | spread (sd over seeds) | paired difference to plain | prompts better / worse |",
             "| --- |" + " ---: |" * (len(seeds) + 4)]
    for mode, s in results["summary"].items():
        paired = ("| " if mode == "plain" else
                  f"{s['paired_difference']:+.3f} | {s['prompts_better']} / {s['prompts_worse']}")
        lines.append(f"| {DEMO_MODE_LABELS.get(mode, mode)} | " + " | ".join(f"{v:.3f}" for v in s["per_seed"].values())
                     + f" | {s['mean']:.3f} | {s['spread']:.3f} | {paired} |")
    pairs = [f"{pair.replace('numina-', 'authors-')}: paired difference {p['paired_difference']:+.3f}, prompts better / "
             f"worse {p['prompts_better']} / {p['prompts_worse']}." for pair, p in results.get("mode_pairs", {}).items()]
    return "\n".join(lines + [""] + pairs + ([""] if pairs else []) + [_source(path, data)])


def render_numina_stages() -> str:
    files = _load("numina_stages_*.json")
    if not files:
        return _missing("python bench/numina_stages.py --prompts 100 --device cuda --out DIR")
    path, data = files[0]
    results = data["results"]
    summary, step, layer = results["summary"], results["reference_step"], results["reference_layer"]
    auc = summary["auc"]
    layers = sorted({int(k.split("|")[2]) for k in auc})
    steps = sorted({int(k.split("|")[1]) for k in auc})
    lines = [f"{results['prompts']} validation prompts (seed {results['validation_seed']}), noise seed "
             f"{results['noise_seed']}, NUMINA {results['mode']} mode at reference step {step}, layer {layer}.", "",
             f"1. Plain generation: frame accuracy {summary['plain_frame_accuracy']:.3f}; per noun and frame, by target:", "",
             "| target | exact | too few | too many | noun-frames |", "| ---: | ---: | ---: | ---: | ---: |"]
    for target, row in sorted(summary["plain_by_target"].items(), key=lambda kv: int(kv[0])):
        n = sum(row.values())
        lines.append(f"| {target} | {row['exact'] / n:.2f} | {row['too_few'] / n:.2f} | {row['too_many'] / n:.2f} | {n} |")
    lines += ["", f"2. Localisation ROC-AUC of the token maps against the final video's objects, at step {step} by layer "
              f"(best over steps {steps[0]}-{steps[-1]} in brackets):", "",
              "| tokens | " + " | ".join(f"layer {l}" for l in layers) + " |", "| --- |" + " ---: |" * len(layers)]
    for scope in ("noun", "phrase"):
        cells = []
        for l in layers:
            best = max(auc.get(f"{scope}|{s}|{l}", 0.0) for s in steps)
            cells.append(f"{auc.get(f'{scope}|{step}|{l}', float('nan')):.3f} ({best:.3f})")
        lines.append(f"| {scope} | " + " | ".join(cells) + " |")
    lines += ["", f"3. Instances of the layout at step {step}, layer {layer} (matched at IoU >= 0.5):", "",
              "| tokens | against | recall | precision | count exact (noun-frames) |", "| --- | --- | ---: | ---: | ---: |"]
    for key, v in summary["instances"].items():
        scope, against = key.split("|")
        lines.append(f"| {scope} | {against} video | {v['recall']:.3f} | {v['precision']:.3f} | {v['count_exact']:.3f} |")
    lines += ["", "4. Controllability with oracle layouts (the plain video's objects, one removed or added; success: "
              "the intended count in at least 3 of 5 frames):", "",
              "| edit | tokens | trials | success | moved the right way |", "| --- | --- | ---: | ---: | ---: |"]
    for key, v in summary["controllability"].items():
        edit, scope = key.split("|")
        lines.append(f"| {edit} one | {scope} | {v['trials']} | {v['success_rate']:.2f} | {v['moved_rate']:.2f} |")
    return "\n".join(lines + ["", _source(path, data)])


def render_demo_workflow() -> str:
    files = _load("demo_workflow_*.json")
    if not files:
        return _missing("python -m bench.demo_workflow --prompts 100 --seeds 0 1 2 --device cuda --work DIR "
                        "--json docs/results/demo_workflow_<gpu>.json")
    path, data = files[0]
    results = data["results"]
    comparison, seconds = results["comparison"], results["wall_seconds"]
    lines = [f"{results['prompts']} demo benchmark prompts x {len(results['seeds'])} noise seeds, plain and NUMINA "
             f"(as the checkpoint ships it), scored by `eval --detector demo-counter`:", "",
             "| seed | plain | NUMINA | NUMINA - plain (paired) |", "| --- | ---: | ---: | ---: |"]
    for label, s in comparison["seeds"].items():
        diff = "-" if s["paired_difference"] is None else f"{s['paired_difference']:+.3f}"
        lines.append(f"| {label} | {s['a']:.3f} | {s['b']:.3f} | {diff} ({s['paired_prompts']} prompts) |")
    a, b, p = comparison["a"], comparison["b"], comparison["paired"]
    lines += [f"| mean (sd over seeds) | {a['mean']:.3f} ({a['spread']:.3f}) | {b['mean']:.3f} ({b['spread']:.3f}) "
              f"| {p['mean_difference']:+.3f} (per prompt) |", "",
              f"Per prompt (averaged over seeds): NUMINA better on {p['better']}, worse on {p['worse']}, same on "
              f"{p['same']}. Wall time, one process: `batch` {seconds['batch']:.0f} s for "
              f"{results['videos_made_this_run']} videos, `eval` {seconds['eval']:.0f} s, `compare` "
              f"{seconds['compare']:.0f} s.", "", _source(path, data)]
    return "\n".join(lines)


def render_fp8_attention() -> str:
    files = _load("fp8_attention_*.json")
    if not files:
        return _missing("python -m bench.fp8_attention --sweep --json docs/results/fp8_attention_<gpu>.json")
    path, data = files[0]
    results = data["results"]
    lines = ["| case | B x L x H | cuDNN bf16 SDPA | FP8 (quantisation included) | FP8, CUDA-graph replay | FP8 / cuDNN "
             "| relative error vs bf16 SDPA |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["attention"]:
        lines.append(f"| {row['case']} | {row['batch']} x {row['tokens']} x {row['heads']} | {row['sdpa_cudnn_ms']:.2f} ms "
                     f"| {row['fp8_ms']:.2f} ms | {row['fp8_graph_ms']:.2f} ms | {row['fp8_over_cudnn']:.2f} "
                     f"(target <= {row['target_ratio']}) | {row['relative_error_vs_bf16_sdpa']:.3f} |")
    forward = results.get("forward")
    if forward:
        lines += ["", f"Whole WanDiT-1.3B forward, B={forward['batch']}, {forward['size']}: bf16 {forward['bf16_ms']:.1f} ms, "
                      f"fp8 {forward['fp8_ms']:.1f} ms eager / {forward['fp8_graph_ms']:.1f} ms graph-replayed "
                      f"(target <= {forward['target_ms']:.0f} ms); relative error of the forward's output, fp8 vs bf16: "
                      f"{forward['relative_error_fp8_vs_bf16']:.4f}."]
    sources = [_source(path, data)]
    sweep_file = next(((p, d) for p, d in _load("fp8_*.json") if d["results"].get("sweep")), None)
    if sweep_file:
        sweep = [row for row in sweep_file[1]["results"]["sweep"] if "ms" in row]   # failed candidates have none
        best, default = min(sweep, key=lambda r: r["ms"]), next((r for r in sweep if r.get("default")), None)
        lines += ["", f"Tile and loop-variant sweep ({len(sweep)} candidates that ran, 2 x {best['tokens']} x 12, "
                      f"one run): fastest BLOCK_M {best['block_m']}, BLOCK_N {best['block_n']}, {best['num_warps']} "
                      f"warps, {best['num_stages']} stages, {_fp8_variant_name(best)}: {best['ms']:.2f} ms"
                      + (f"; that run's default ({_fp8_variant_name(default)}) {default['ms']:.2f} ms" if default else "")
                      + "; float16 exp2 (half_exp) "
                      + ", ".join(f"{r['ms']:.2f}" for r in sweep if r.get("half_exp")) + " ms."]
        if sweep_file[0] != path:
            sources.append(_source(*sweep_file))
    return "\n".join(lines + ["", f"Inputs: {results.get('inputs', 'random')}.", ""] + sources)


def _fp8_variant_name(row: dict) -> str:
    """A sweep row's loop variant: its switches that are on (the row's booleans other than "default": the
    fields of tiles.Fp8Variant, written by bench/fp8_attention.py), else "pointer loads"."""
    names = [key for key, value in row.items() if value is True and key != "default"]
    return "+".join(names) if names else "pointer loads"


def render_fp8_demo_accuracy() -> str:
    files = _load("fp8_demo_accuracy_*.json")
    if not files:
        return _missing("python -m bench.fp8_demo_accuracy --prompts 100 --seeds 0 1 2 --work DIR --parallel "
                        "--json docs/results/fp8_demo_accuracy_<gpu>.json")
    path, data = files[0]
    r = data["results"]
    lines = [f"{r['prompts']} demo benchmark prompts x {len(r['seeds'])} noise seeds, the same prompts, seeds and "
             f"counts under both attentions, scored by `eval --detector demo-counter`:", "",
             "| attention | plain | NUMINA | NUMINA - plain (paired) | prompts better / worse |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for attention, c in r["numina_vs_plain"].items():
        p = c["paired"]
        lines.append(f"| {attention} | {c['a']['mean']:.3f} | {c['b']['mean']:.3f} | {p['mean_difference']:+.3f} "
                     f"| {p['better']} / {p['worse']} |")
    lines += ["", "| mode | bf16 | fp8 | fp8 - bf16 (paired) | prompts better / worse / same |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for mode, c in r["fp8_vs_bf16"].items():
        p = c["paired"]
        lines.append(f"| {mode} | {c['a']['mean']:.3f} | {c['b']['mean']:.3f} | {p['mean_difference']:+.3f} "
                     f"| {p['better']} / {p['worse']} / {p['same']} |")
    together = " (both batches at once on the GPU)" if r.get("batches_in_parallel") else ""
    lines += ["", "Batch wall time" + together + ": " + ", ".join(
        f"{a} {s:.0f} s" for a, s in r["wall_seconds"]["batch"].items()) + ".", "", _source(path, data)]
    return "\n".join(lines)


def render_memory() -> str:
    files = _load("memory_*.json")
    if not files:
        return _missing("python -m bench.memory_peak --json docs/results/memory_<gpu>.json")
    # every file's rows, newest first; a (model, size, run, offload) row measured again replaces the older one
    rows, used = {}, []
    for path, data in files:
        fresh = [row for row in data["results"]["rows"]
                 if (row["config"], row["size"], row["mode"], row["offload"]) not in rows]
        for row in fresh:
            rows[(row["config"], row["size"], row["mode"], row["offload"])] = row
        if fresh:
            used.append((path, data))
    rows = list(rows.values())
    lines = ["| model, size | run | offload | peak allocated | peak reserved | largest phase | goal | video = no offload "
             "| total time |", "| --- | --- | --- | ---: | ---: | --- | --- | --- | ---: |"]
    for row in rows:
        phases = row.get("peak_allocated_by_phase_gib") or {}
        largest = max(phases, key=phases.get) if phases else "-"
        goal = row.get("goal_peak_allocated_gib")
        goal_text = "-" if goal is None else f"<= {goal} GiB: {'met' if row.get('meets_goal') else 'MISSED'}"
        equal = row.get("video_equals_no_offload")
        lines.append(f"| {row['config']} {row['size']}x{row['frames']} | {row['mode']} | {row['offload']} "
                     f"| {row['peak_allocated_gib']:.2f} GiB | {row['peak_reserved_gib']:.2f} GiB | {largest} | {goal_text} "
                     f"| {'-' if equal is None else equal} | {row['total_s']:.1f} s"
                     + (f" ({row['note']})" if row.get("note") else "") + " |")
    steps = sorted({row["steps"] for row in rows})
    return "\n".join(lines + ["", f"{'/'.join(map(str, steps))} denoising steps a run (longer runs were not measured).", ""] + [_source(path, data) for path, data in used])


def render_step_cache() -> str:
    files = _load("step_cache_*.json")
    if not files:
        return _missing("python bench/step_cache.py --prompts 100 --device cuda --json docs/results/step_cache_<gpu>.json")
    path, data = files[0]
    results = data["results"]
    lines = [f"{results['prompts']} unseen prompts x {len(results['noise_seeds'])} noise seed(s), "
             f"{results['steps']} steps, tau {results['easycache_tau']}, warm-up {results['easycache_warmup']} steps; "
             f"accuracy: frame-wise counting accuracy (the world's exact counter), in brackets the paired difference "
             f"to off; PSNR: to the uncached video of the same prompt, seed and kind, mean / min over the videos; "
             f"times: mean wall time per video on this device; NUMINA as the checkpoint ships it.", "",
             "| --cache-steps | plain accuracy | plain PSNR | plain steps reused | plain denoising | NUMINA accuracy "
             "| NUMINA PSNR | phase-2 steps reused | phase 2 |", "| --- |" + " ---: |" * 8]
    for setting, row in results["settings"].items():
        cells = []
        for kind, seconds in (("plain", "denoising_s_mean"), ("numina", "phase2_s_mean")):
            r = row[kind]
            psnr = r["psnr_db_to_off"]
            psnr_text = ("identical" if psnr["changed_videos"] == 0 else
                         f"{psnr['mean_over_changed']:.1f} / {psnr['min']:.1f} dB")
            cells += [f"{r['accuracy']:.3f} ({r['accuracy_minus_off']:+.3f})", psnr_text,
                      f"{r['steps_reused_mean']:.1f} of {results['steps']}", f"{r[seconds]:.2f} s"]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", _source(path, data)])


RENDERERS = {"cli_threads": render_cli_threads, "e2e": render_e2e, "countbench_demo": render_countbench_demo,
             "numina_stages": render_numina_stages, "demo_workflow": render_demo_workflow,
             "fp8_demo_accuracy": render_fp8_demo_accuracy,
             "modulated_cross_attention": render_modulated_cross_attention, "kernels": render_kernels,
             "dit_forward": render_dit_forward, "fp8_attention": render_fp8_attention, "memory": render_memory,
             "step_cache": render_step_cache}


def render(text: str) -> str:
    """`text` (README) with every marked table re-rendered; unknown table names are an error."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"README names an unknown results table {name!r}; known: {sorted(RENDERERS)}")
        return f"{match.group(1)}{RENDERERS[name]()}\n{match.group(4)}"

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md differs")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md's results tables differ from docs/results/: run python tools/render_readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
