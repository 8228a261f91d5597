"""Benchmark prompt files: prompts.txt (one prompt a line) and noun_counts.jsonl (one JSON object a line).

The layout is CountBench's (github.com/H-EmbodVis/NUMINA, evaluation/): blank lines are skipped, as the authors'
evaluator skips them, and the k-th non-blank prompt line goes with the k-th non-blank counts line. Prompts are
numbered from 1 in that order (the authors' `NNN_*.mp4` names). Every problem in the files is collected with its
file line number and reported at once, before any work starts.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine.settings import MAX_COUNT
from ..errors import UserInputError


@dataclass(frozen=True)
class BenchmarkPrompt:
    """One benchmark prompt. `index`: 1-based prompt number; `line`/`counts_line`: 1-based line numbers in the
    files; `counts`: {noun: count} from the counts file, None when no counts file was given."""
    index: int
    prompt: str
    line: int
    counts: dict[str, int] | None = None
    counts_line: int | None = None


def prompt_words(text: str) -> list[str]:
    """Lower-case words (letters and digits) of a prompt: "hydration-station" -> ["hydration", "station"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _non_blank_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """[(1-based line number, stripped text)] of the non-blank lines of a UTF-8 file."""
    if not path.is_file():
        raise UserInputError(f"{what} {path} does not exist (or is not a file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_counts_line(text: str, prompt: str | None) -> tuple[dict[str, int] | None, list[str]]:
    """Parse one counts line; (counts or None, problems). `prompt`: the line's prompt, for the noun check."""
    try:
        counts = json.loads(text)
    except json.JSONDecodeError as err:
        return None, [f"not valid JSON ({err.msg} at character {err.pos + 1}): {text}"]
    if not isinstance(counts, dict) or not counts:
        return None, [f'must be a non-empty JSON object like {{"cats": 3, "dogs": 2}}, got {text}']
    problems = []
    for noun, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            problems.append(f"count of {noun!r} must be a whole number from 1 to {MAX_COUNT}, got {count!r}")
        words = prompt_words(noun)
        if not words:
            problems.append(f"noun {noun!r} has no letters")
        elif prompt is not None and not set(words) <= set(prompt_words(prompt)):
            problems.append(f"unknown noun {noun!r}: its prompt does not name it ({prompt!r})")
    return counts, problems


def read_benchmark(prompts_path: str | Path, counts_path: str | Path | None = None) -> list[BenchmarkPrompt]:
    """The prompts of `prompts_path`, with their counts from `counts_path` when given.

    Raises UserInputError listing every bad line as `FILE:LINE: problem`: an empty prompt file, bad JSON, a
    counts object that is not {noun: whole count 1..MAX_COUNT}, a noun its prompt does not name, and a counts
    file whose number of lines differs from the prompt file's.
    """
    prompts_path = Path(prompts_path)
    prompt_lines = _non_blank_lines(prompts_path, "prompt file")
    if not prompt_lines:
        raise UserInputError(f"prompt file {prompts_path} has no prompt: write one prompt a line")
    if counts_path is None:
        return [BenchmarkPrompt(index, text, line) for index, (line, text) in enumerate(prompt_lines, start=1)]
    counts_path = Path(counts_path)
    counts_lines = _non_blank_lines(counts_path, "counts file")
    problems = []
    if len(counts_lines) != len(prompt_lines):
        problems.append(f"{counts_path} has {len(counts_lines)} counts lines but {prompts_path} has "
                        f"{len(prompt_lines)} prompts: the files must match line by line (blank lines skipped)")
    items = []
    for index, ((line, prompt), counts_entry) in enumerate(
            zip(prompt_lines, counts_lines + [None] * (len(prompt_lines) - len(counts_lines))), start=1):
        if counts_entry is None:
            items.append(BenchmarkPrompt(index, prompt, line))
            continue
        counts_line, text = counts_entry
        counts, line_problems = _check_counts_line(text, prompt)
        problems += [f"{counts_path}:{counts_line} (prompt {index}, {prompts_path}:{line}): {p}"
                     for p in line_problems]
        items.append(BenchmarkPrompt(index, prompt, line, counts, counts_line))
    if problems:
        raise UserInputError(format_problems(problems))
    return items


def format_problems(problems: list[str]) -> str:
    """One error message out of many line problems."""
    return f"{len(problems)} problem(s) in the benchmark files, nothing was started:\n  " + "\n  ".join(problems)
