"""Generate a benchmark: every (seed, prompt, mode) once, resumably, split across torchrun ranks.

Layout under the output folder (the NUMINA authors' evaluator finds `NNN_*.mp4` in a folder):

    DIR/<mode>/seed<k>/<NNN>_<slug>.mp4     the video (NNN: the 1-based prompt number; .npy frames with
                                            video_format "npy", for machines without PyAV)
    DIR/<mode>/seed<k>/<NNN>_<slug>.json    its report (Engine.report), written last
    DIR/<mode>/seed<k>/<NNN>_<slug>.layout.png   NUMINA's layout (numina mode)
    DIR/index.jsonl                         one line per finished video, in job order

Every file is written atomically, so a video whose report exists is finished; a run killed midway leaves only
whole files (a temp file at most, removed by the next run), and the next run makes what is missing.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..engine.settings import GenerationRequest
from ..engine.video_io import atomic_output
from ..errors import UserInputError
from .distributed import Ranks
from .prompt_files import BenchmarkPrompt, format_problems

MODES = ("numina", "plain")
VIDEO_FORMATS = ("mp4", "npy")
INDEX_NAME = "index.jsonl"


def slug(prompt: str, length: int = 40) -> str:
    """File-name form of a prompt: lower-case words joined by '-', at most `length` characters."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:length].strip("-") or "prompt"


@dataclass(frozen=True)
class Job:
    """One video of the batch. `counts`: the nouns counted for the benchmark ({noun: count}; those NUMINA is
    asked for in numina mode), from the counts file or parsed from the prompt."""
    item: BenchmarkPrompt
    mode: str
    seed: int
    counts: dict[str, int] | None
    video_format: str = "mp4"

    @property
    def stem(self) -> str:
        return f"{self.item.index:03d}_{slug(self.item.prompt)}"

    def folder(self, out_dir: Path) -> Path:
        return out_dir / self.mode / f"seed{self.seed}"

    def video_path(self, out_dir: Path) -> Path:
        return self.folder(out_dir) / f"{self.stem}.{self.video_format}"

    def report_path(self, out_dir: Path) -> Path:
        return self.folder(out_dir) / f"{self.stem}.json"

    def is_finished(self, out_dir: Path) -> bool:
        return self.report_path(out_dir).is_file() and self.video_path(out_dir).is_file()

    def request(self, options: dict) -> GenerationRequest:
        """The generation request; `options`: GenerationRequest fields shared by the batch (size, steps, ...)."""
        return GenerationRequest(prompt=self.item.prompt, seed=self.seed, numina=self.mode == "numina",
                                 counts=self.counts, **options)


def plan_jobs(engine, items: list[BenchmarkPrompt], modes: list[str], seeds: list[int],
              options: dict, video_format: str = "mp4") -> list[Job]:
    """All jobs, ordered seed, prompt, mode; every prompt checked by `engine.check` first.
    video_format: "mp4", or "npy" (the frames, lossless, written without PyAV).

    Raises UserInputError listing each prompt the engine refuses (with its file line numbers), before anything
    is generated: a noun the tokenizer cannot find in the prompt, counts out of range, sizes, NUMINA settings.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserInputError(f"--modes {' '.join(unknown) or '(none)'}: choose from {' '.join(MODES)}")
    if video_format not in VIDEO_FORMATS:
        raise UserInputError(f"--video-format {video_format}: choose from {' '.join(VIDEO_FORMATS)}")
    if not seeds:
        raise UserInputError("--seeds names no seed: give at least one, e.g. --seeds 0 1 2")
    problems, counted = [], []
    for item in items:
        request = GenerationRequest(prompt=item.prompt, numina="numina" in modes, counts=item.counts, **options)
        try:
            prepared = engine.check(request)
        except UserInputError as err:
            where = f"prompt {item.index} (line {item.line}" + (
                f", counts line {item.counts_line})" if item.counts_line else ")")
            problems.append(f"{where}: {err}")
            continue
        counted.append(replace(item, counts=item.counts if item.counts is not None else
                               (dict(prepared.counts) if prepared.counts else None)))
    if problems:
        raise UserInputError(format_problems(problems))
    return [Job(item, mode, seed, item.counts, video_format) for seed in dict.fromkeys(seeds) for item in counted
            for mode in dict.fromkeys(modes)]


def index_entry(job: Job, out_dir: Path) -> dict:
    """index.jsonl's line for a finished job, read back from its report."""
    report = json.loads(job.report_path(out_dir).read_text(encoding="utf-8"))
    numina = report.get("numina", {})
    return {"index": job.item.index, "prompt": job.item.prompt, "mode": job.mode, "seed": job.seed,
            "counts": job.counts, "video": str(job.video_path(out_dir).relative_to(out_dir)),
            "report": str(job.report_path(out_dir).relative_to(out_dir)),
            "numina_enabled": bool(numina.get("enabled")), "regenerated": numina.get("regenerated"),
            "timings_s": report.get("timings_s", {}), "device": report.get("device")}


def write_index(jobs: list[Job], out_dir: Path, known: dict[int, str] | None = None) -> int:
    """Rewrite DIR/index.jsonl atomically with the finished jobs, in job order; returns how many lines it has.

    known: {position in jobs: index line} already read; the reports of the other finished jobs are read and
    added to it (so a caller that keeps it reads each report once)."""
    known = {} if known is None else known
    for position, job in enumerate(jobs):
        if position not in known and job.is_finished(out_dir):
            known[position] = json.dumps(index_entry(job, out_dir), ensure_ascii=False)
    with atomic_output(out_dir / INDEX_NAME, ".jsonl") as temp:
        temp.write_text("".join(known[position] + "\n" for position in sorted(known)), encoding="utf-8")
    return len(known)


def remove_leftover_temp_files(job: Job, out_dir: Path) -> None:
    """Delete the temp files a killed run left for this job (atomic_output names them .<name>.*.tmp*)."""
    folder = job.folder(out_dir)
    if folder.is_dir():
        for leftover in folder.glob(f".{job.stem}.*.tmp*"):
            leftover.unlink(missing_ok=True)


@dataclass
class BatchSummary:
    total: int
    skipped: int
    made: int
    seconds: float


def run_batch(engine, jobs: list[Job], out_dir: Path, options: dict, ranks: Ranks = Ranks(), *,
              progress: bool = True, log=None) -> BatchSummary:
    """Make this rank's share of `jobs` that is not finished yet; rank 0 then writes the index of all.
    `log`: where the progress bar and messages go (default sys.stderr).

    `engine`: an Engine (check/generate/save). `options`: GenerationRequest fields shared by the batch.
    Single process: the index is rewritten after every video, so a killed run keeps an index of what is done.
    Several ranks: each writes its own videos and reports; after a barrier rank 0 merges every finished job
    into one index (the same as one process would write, timings aside).
    """
    log = sys.stderr if log is None else log
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modes_per_prompt = len({job.mode for job in jobs}) or 1
    mine = ranks.share(jobs, group=modes_per_prompt)      # a rank makes every mode of its prompts: balanced work
    finished_before = [job for job in jobs if job.is_finished(out_dir)]
    todo = [job for job in mine if not job.is_finished(out_dir)]
    for job in todo:
        remove_leftover_temp_files(job, out_dir)
    ranks.barrier()                       # every rank has looked before any writes
    if ranks.is_main:
        print(f"batch: {len(jobs)} videos, {len(finished_before)} already finished (skipped), "
              f"{len(jobs) - len(finished_before)} to make" +
              (f" on {ranks.world_size} ranks" if ranks.world_size > 1 else ""), file=log)
    index_lines: dict[int, str] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="video", disable=not (progress and ranks.is_main),
               desc="videos" if ranks.world_size == 1 else f"rank 0 of {ranks.world_size}", file=log)
    try:
        for job in todo:
            folder = job.folder(out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            result = engine.generate(job.request(options), progress=False)
            engine.save(result, folder, stem=job.stem, video_format=job.video_format)
            bar.update(1)
            if ranks.world_size == 1:
                write_index(jobs, out_dir, index_lines)
    finally:
        bar.close()
    ranks.barrier()
    if ranks.is_main:
        lines = write_index(jobs, out_dir)
        print(f"batch: {lines} of {len(jobs)} videos finished; index {out_dir / INDEX_NAME}", file=log)
    return BatchSummary(total=len(jobs), skipped=len(finished_before), made=len(todo),
                        seconds=time.perf_counter() - started)
