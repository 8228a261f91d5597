"""README's results tables are what tools/render_readme_tables.py renders from docs/results/."""
from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_renderer():
    spec = importlib.util.spec_from_file_location("render_readme_tables", REPO / "tools" / "render_readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_equal_the_rendered_results():
    renderer = load_renderer()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rendered = renderer.render(readme)
    diff = "\n".join(difflib.unified_diff(readme.splitlines(), rendered.splitlines(), "README.md", "rendered",
                                          lineterm=""))
    assert rendered == readme, f"run python tools/render_readme_tables.py:\n{diff}"


def test_every_results_file_says_where_when_and_by_what_it_was_measured():
    files = sorted((REPO / "docs" / "results").glob("*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert {"script", "argv", "device", "date", "git_commit", "versions", "results"} <= set(data), path
        assert (REPO / data["script"]).is_file(), path
        assert data["device"], path
        if data["date"] is None or data["git_commit"] is None:          # files from before the writer
            assert data.get("provenance_note") and data.get("committed_in"), path


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    """The check can fail: editing a figure in a results file changes the rendered table."""
    renderer = load_renderer()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    source = REPO / "docs" / "results" / "e2e_h200.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    data["results"]["numina_over_plain"] += 0.5
    (tmp_path / "e2e_h200.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(renderer, "RESULTS", tmp_path)
    monkeypatch.setattr(renderer, "REPO", tmp_path)
    assert renderer.render(readme) != readme



# bench/e2e.py files: made by the bench's own result functions from synthetic runs, rendered from a folder of their own

def e2e_run(total: float, *, numina: bool, offload: bool = False, cached: bool = False, steps: int = 50) -> dict:
    """A timed_run record as bench/e2e.py keeps it (no frames), times adding up to `total` seconds."""
    head = {"offload": 2.5} if offload else {}
    if numina:
        phases = {**head, "text encoding": 0.06, "phase 1": 0.25 * total, "layout": 0.2, "preview decode": 0.2,
                  "decode": 3.35}
        phases["phase 2"] = total - sum(phases.values())
        cache = {"cache_steps": "all" if cached else "off", "phase 1": {"steps_computed": 15, "steps_reused": 5},
                 "phase 2": {"steps_computed": 30 if cached else 50, "steps_reused": 20 if cached else 0}}
        report = {"enabled": True, "phase1_steps_computed": 16, "phase1_steps_reused": 5, "phase2_modulated_steps": 45,
                  "regenerated": True, "reference_step": min(20, steps - 1)}
    else:
        phases = {**head, "text encoding": 0.06, "decode": 3.35}
        phases["denoising"] = total - sum(phases.values())
        cache = {"cache_steps": "all" if cached else "off",
                 "denoising": {"steps_computed": 31 if cached else 50, "steps_reused": 19 if cached else 0}}
        report = {}
    return {"total_s": total, "phases_s": phases, "peak_gpu_memory_gib": {"allocated": 22.7 + numina, "reserved": 26.0},
            "cuda_graphs": {"enabled": True}, "numina": report, "step_cache": cache}


def e2e_file(tmp_path, monkeypatch, argv: list[str], totals: dict[str, tuple[float, float]], *,
             planned_only: tuple[str, ...] = ()) -> dict:
    """The results file bench/e2e.py writes for `argv` once the configurations in `totals` ({name: (plain,
    NUMINA) seconds}, in order) are measured; `planned_only`: names given to --configs but not measured
    (a run stopped early)."""
    from bench import e2e

    monkeypatch.setattr(e2e.torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    monkeypatch.setattr(e2e, "check_attention_setting", lambda *_: None)      # fp8 on a GPU that has it
    args, configurations = e2e.parse_args(argv)
    measured = [c for c in configurations if c.name not in planned_only]
    assert [c.name for c in measured] == list(totals)
    width, height = map(int, args.size.split("*"))
    entries, warmups = {}, [{"before": measured[0].name, "attention": "bf16", "offload": "none", "steps": 2,
                             "total_s": 9.0}]
    for index, configuration in enumerate(measured):
        plain_s, numina_s = totals[configuration.name]
        cached, offload = configuration.cache_steps != "off", configuration.offload != "none"
        runs = {"plain": e2e_run(plain_s, numina=False, offload=offload, cached=cached, steps=args.steps)}
        if index == 0 and not args.skip_graphs_off:
            runs["plain, graphs off"] = e2e_run(plain_s + 0.25, numina=False, offload=offload, cached=cached,
                                                steps=args.steps)
        runs["NUMINA"] = e2e_run(numina_s, numina=True, offload=offload, cached=cached, steps=args.steps)
        if index == 0:
            result = e2e.first_configuration_result(args, configuration, runs, warmups[0], width, height)
        entries[configuration.name] = e2e.configuration_entry(configuration, runs, result["runs"], args.steps)
        e2e.add_configurations(result, configurations, entries, warmups)
    return {"script": "bench/e2e.py", "argv": argv, "device": "NVIDIA H200", "date": "2026-12-03T00:00:00+00:00",
            "git_commit": "0123456789abcdef", "git_dirty": False, "versions": {}, "results": result}


def render_e2e_files(tmp_path, monkeypatch, *files: dict) -> str:
    renderer = load_renderer()
    for index, data in enumerate(files):
        (tmp_path / f"e2e_{index}.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(renderer, "RESULTS", tmp_path)
    monkeypatch.setattr(renderer, "REPO", tmp_path)
    return renderer.render_e2e()


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every markdown table row of `text` whose first cell is `first_cell`."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] == first_cell]


def test_e2e_renders_every_configuration_side_by_side(tmp_path, monkeypatch):
    totals = {"bf16": (54.0, 70.0), "cache-all": (40.0, 56.0), "fp8": (47.0, 61.0), "offload-full": (58.0, 75.0)}
    data = e2e_file(tmp_path, monkeypatch, ["--steps", "50", "--force-modulation", "--configs", *totals], totals)
    text = render_e2e_files(tmp_path, monkeypatch, data)
    for name, (plain_s, numina_s) in totals.items():
        [row] = table_rows(text, name)
        assert row[4:9] == [f"{plain_s:.2f} s", f"{numina_s:.2f} s", f"{numina_s / plain_s:.3f}",
                            f"{plain_s / 54.0:.3f}, {numina_s / 70.0:.3f}", "22.7 GiB / 23.7 GiB"], row
        assert table_rows(text, f"{name}: plain") and table_rows(text, f"{name}: NUMINA")    # the phase table
    assert table_rows(text, "configuration")[0][7] == "vs bf16: plain, NUMINA"
    assert table_rows(text, "offload-full")[0][1:4] == ["bf16", "off", "full"]
    assert table_rows(text, "bf16: plain, graphs off")
    assert "offload |" in text.splitlines()[0]                               # an offloaded configuration: its column
    assert [row[1] for row in table_rows(text, "offload-full: NUMINA")] == ["2.50 s"]
    assert "cache-all: --cache-steps all caches a plain run exactly as --cache-steps plain does" in text
    assert "cache-all: steps EasyCache reused, plain: denoising 19; NUMINA: phase 1 5, phase 2 20 (of 50)." in text
    assert "configuration bf16" in text and "CUDA graphs off / on per plain step" in text
    assert "Planned but not measured" not in text


def test_e2e_renders_a_run_stopped_before_its_last_configurations(tmp_path, monkeypatch):
    totals = {"bf16": (54.0, 70.0), "fp8": (47.0, 61.0)}
    data = e2e_file(tmp_path, monkeypatch, ["--configs", "bf16", "fp8", "offload-full", "cache-all"], totals,
                    planned_only=("offload-full", "cache-all"))
    text = render_e2e_files(tmp_path, monkeypatch, data)
    assert table_rows(text, "fp8") and not table_rows(text, "offload-full")
    assert "Planned but not measured (the run stopped before them): offload-full, cache-all." in text


def test_e2e_renders_a_file_without_the_graphs_off_run(tmp_path, monkeypatch):
    data = e2e_file(tmp_path, monkeypatch, ["--steps", "50", "--force-modulation", "--skip-graphs-off"],
                    {"bf16": (54.0, 70.0)})
    assert "plain, graphs off" not in data["results"]["runs"] and "graphs_off_over_on_step" not in data["results"]
    text = render_e2e_files(tmp_path, monkeypatch, data)
    assert [row[0] for row in table_rows(text, "plain") + table_rows(text, "NUMINA")] == ["plain", "NUMINA"]
    assert "**NUMINA / plain = 1.296**" in text and "graphs off" not in text
    assert "configuration |" not in text                                     # one configuration: no side-by-side table


def test_e2e_renders_a_14b_file(tmp_path, monkeypatch):
    argv = ["--config", "14B", "--size", "1280*720", "--steps", "2", "--force-modulation", "--skip-graphs-off",
            "--offload", "text-encoder"]
    data = e2e_file(tmp_path, monkeypatch, argv, {"offload-text-encoder": (40.0, 73.3)})
    assert "forward_tflops" not in data["results"] and "authors_estimate_over_numina_50_steps" not in data["results"]
    text = render_e2e_files(tmp_path, monkeypatch, data)
    assert "2 steps, Wan2.1-14B, 1280*720, 81 frames, forced modulation on, --offload text-encoder" in text
    assert "authors'" not in text
    assert [row[-2] for row in table_rows(text, "NUMINA")] == ["73.30 s"]


def test_e2e_renders_every_file_newest_first(tmp_path, monkeypatch):
    old = e2e_file(tmp_path, monkeypatch, ["--skip-graphs-off"], {"bf16": (54.0, 70.0)})
    new = e2e_file(tmp_path, monkeypatch, ["--configs", "bf16", "fp8"], {"bf16": (55.0, 71.0), "fp8": (47.0, 61.0)})
    new["date"] = "2026-12-04T00:00:00+00:00"
    text = render_e2e_files(tmp_path, monkeypatch, old, new)
    assert text.index("e2e_1.json") < text.index("e2e_0.json")
    assert table_rows(text, "fp8") and table_rows(text, "plain")
