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
    source = REPO / "docs" / "results" / "e2e_h100.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    data["results"]["numina_over_plain"] += 0.5
    (tmp_path / "e2e_h100.json").write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(renderer, "RESULTS", tmp_path)
    monkeypatch.setattr(renderer, "REPO", tmp_path)
    assert renderer.render(readme) != readme

