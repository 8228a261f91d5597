"""`numina-engine` command line: `run` makes a video, `counts` shows what NUMINA would count; `batch`, `eval` and
`compare` reproduce a CountBench table (numina_engine/workflow)."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from . import __version__
from .errors import CheckpointError, UserInputError
from .numina.config import DEFAULT_MODE, MODES

# Wan2.1's defaults (engine/loading.py ModelDefaults, numina/config.py NuminaConfig; tests/test_cli.py
# checks that they agree), for --help without importing torch. The demo model's come from its sidecar.
WAN21_DEFAULTS = {"size": "832*480", "frames": 81, "steps": 50, "guide_scale": 5.0, "shift": 5.0,
                  "reference_step": 20, "reference_layer": 15}
DEMO_SIDECAR = Path(__file__).resolve().parent / "assets" / "counting-world" / "numina_engine.json"
OUTPUT_NAMES = ("video.mp4", "video_preview.mp4", "layout.png", "report.json")    # api.OUTPUT_FILES
# CPU threads for tiny shapes (the demo model): 2 was fastest on a quiet 2-core machine (15.5 s vs 24.3 s
# with 1), docs/results/cli_threads_cpu.json (bench/cli_threads.py); on a loaded machine an earlier run found
# 1 faster. Used when OMP_NUM_THREADS is not set and the video is at most TINY_PIXELS.
CPU_THREADS = 2
TINY_PIXELS = 64 * 64
EXIT_INTERRUPTED = 130
CACHE_STEPS = ("off", "plain", "phase2", "all")     # engine/easycache.py CACHE_STEPS (tests/test_step_cache.py)


def demo_defaults() -> dict:
    """The embedded demo model's defaults, in WAN21_DEFAULTS' keys (read from its sidecar JSON)."""
    values = json.loads(DEMO_SIDECAR.read_text(encoding="utf-8"))
    numina = values.get("numina", {})
    return {"size": f"{values['width']}*{values['height']}", "frames": values["frames"], "steps": values["steps"],
            "guide_scale": values["guide_scale"], "shift": values["shift"],
            "reference_step": numina.get("reference_step", WAN21_DEFAULTS["reference_step"]),
            "reference_layer": numina.get("reference_layer", WAN21_DEFAULTS["reference_layer"])}


def _defaults_text(key: str, demo: dict, extra: str = "") -> str:
    return (f"(default: the model's own{extra}; the demo model (no --ckpt-dir) {demo[key]}, "
            f"Wan2.1 {WAN21_DEFAULTS[key]})")


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    demo = demo_defaults()
    run.add_argument("--prompt", required=True, help="what the video shows, e.g. \"Three cats chasing two dogs\"")
    run.add_argument("--ckpt-dir", default=None,
                     help="Wan2.1-T2V checkpoint folder (official or diffusers layout); "
                          "default: the embedded demo model")
    run.add_argument("--size", default=None, help="WIDTH*HEIGHT, multiples of one token (16 px for Wan2.1, "
                     "2 px for the demo model) " + _defaults_text("size", demo))
    run.add_argument("--frames", type=int, default=None, help="frames, 4n+1 for Wan2.1's VAE "
                     + _defaults_text("frames", demo))
    run.add_argument("--steps", type=int, default=None, help="denoising steps " + _defaults_text("steps", demo))
    run.add_argument("--guide-scale", type=float, default=None, help="classifier-free guidance scale "
                     + _defaults_text("guide_scale", demo))
    run.add_argument("--shift", type=float, default=None, help="flow-matching sigma shift "
                     + _defaults_text("shift", demo))
    run.add_argument("--seed", type=int, default=0, help="noise seed, 0 to 2**64-1 (default 0)")
    run.add_argument("--negative-prompt", default=None, help="default: Wan2.1's own negative prompt")
    run.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    run.add_argument("--out-dir", default=None,
                     help="folder for video.mp4 and report.json (default: outputs/<time>-<prompt>)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the outputs of an earlier run already in --out-dir")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    gpu = run.add_argument_group("GPU memory and speed")
    gpu.add_argument("--offload", nargs="?", const="full", default="none", choices=("text-encoder", "full"),
                     help="for small GPUs (--offload, i.e. 'full'): the text encoder's weights stay on the CPU "
                          "(streamed to the GPU block by block to encode), the DiT leaves the GPU while the VAE "
                          "decodes and NUMINA's extraction holds fewer maps at a time; 'text-encoder': only the "
                          "first (e.g. Wan2.1-14B at 720p on 80 GB). The video is the same")
    gpu.add_argument("--no-cuda-graphs", action="store_true",
                     help="run the denoising steps eagerly instead of replaying CUDA graphs "
                          "(graphs are used on CUDA only)")
    gpu.add_argument("--attention", choices=("bf16", "fp8"), default="bf16",
                     help="the DiT's self-attention: 'bf16' (SDPA, default) or 'fp8' (e4m3 Triton kernel, needs "
                          "compute capability >= 8.9: Ada, Hopper); NUMINA's extraction stays exact")
    gpu.add_argument("--parallel", default=None, metavar="CFG,ULYSSES",
                     help="one video on every rank of `torchrun --nproc-per-node N -m numina_engine run ...`: "
                          "CFG degree (1 or 2) times Ulysses sequence-parallel degree (dividing the head count) "
                          "= N, e.g. 2,2 on 4 GPUs; default under torchrun: CFG 2 when N is even, the rest Ulysses. "
                          "Rank 0 writes the outputs; CUDA graphs are off")
    gpu.add_argument("--cache-steps", choices=CACHE_STEPS, default="off",
                     help="EasyCache (phase 1's rule and tau/warm-up) beyond phase 1: 'plain' caches plain "
                          "generation, 'phase2' NUMINA's phase 2, 'all' both (default off; phase 1 caches "
                          "either way)")
    numina = run.add_argument_group("NUMINA")
    numina.add_argument("--counts", default=None,
                        help='JSON object of nouns and counts, e.g. \'{"cats": 3, "dogs": 2}\' '
                             "(default: parsed from the prompt)")
    numina.add_argument("--no-numina", action="store_true", help="plain Wan2.1 generation, no count alignment")
    numina.add_argument("--reference-step", type=int, default=None, help="phase-1 step to extract at "
                        + _defaults_text("reference_step", demo, ", scaled to --steps: the same fraction of the run"))
    numina.add_argument("--reference-layer", type=int, default=None, help="DiT block to extract at "
                        + _defaults_text("reference_layer", demo))
    numina.add_argument("--numina-mode", choices=MODES, default=None,
                        help="'authors': reproduce the NUMINA authors' code rule by rule; 'engine': the engine's "
                             "own rules (README, Known differences). Default: the model's, else "
                             f"'{DEFAULT_MODE}'")
    numina.add_argument("--token-scope", choices=("noun", "phrase"), default=None,
                        help="tokens NUMINA reads the cross-attention map from and writes the bias onto: 'noun' "
                             "(the noun's own tokens, the authors' rule) or 'phrase' (its count phrase: count word, "
                             "modifiers, the noun). Default: the model's, else 'noun'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numina-engine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("run", help="generate a video"))
    counts = commands.add_parser("counts", help="print the nouns NUMINA counts in a prompt, as one JSON line")
    counts.add_argument("prompt", help='the prompt to parse, e.g. "Three cats chasing two dogs" '
                                       '(prints {"cats": 3, "dogs": 2})')
    _add_workflow_commands(commands)
    return parser


# `run` options that `batch` shares, by dest; the others are per video (prompt, seed, counts, mode, out-dir).
BATCH_SHARED_OPTIONS = ("ckpt_dir", "size", "frames", "steps", "guide_scale", "shift", "negative_prompt", "device",
                        "quiet", "offload", "no_cuda_graphs", "reference_step", "reference_layer", "numina_mode",
                        "token_scope", "attention")


def _add_workflow_commands(commands) -> None:
    """`batch`, `eval` and `compare` (numina_engine/workflow)."""
    batch = commands.add_parser("batch", help="generate a benchmark: every prompt x seed x mode, resumable; "
                                "several GPUs with torchrun --nproc-per-node N -m numina_engine batch ...")
    batch.add_argument("--prompts", required=True, help="prompt file, one prompt a line (CountBench's prompts.txt)")
    batch.add_argument("--counts", default=None,
                       help="counts file, one JSON object a line matching the prompts (CountBench's "
                            "noun_counts.jsonl); default: counts parsed from each prompt")
    batch.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds (default 0)")
    batch.add_argument("--modes", nargs="+", choices=("numina", "plain"), default=["numina", "plain"],
                       help="numina and/or plain (default both)")
    batch.add_argument("--video-format", choices=("mp4", "npy"), default="mp4",
                       help="mp4 (default), or npy: the frames as uint8 [T, H, W, 3] .npy files, lossless, for "
                            "machines without PyAV; `eval` reads both")
    batch.add_argument("--out-dir", required=True, help="writes <mode>/seed<k>/<NNN>_<slug>.mp4, a report "
                       "per video and index.jsonl; a second run skips the videos already finished")
    template = argparse.ArgumentParser(add_help=False)
    _add_run_arguments(template)
    for group in template._action_groups:
        actions = [action for action in group._group_actions if action.dest in BATCH_SHARED_OPTIONS]
        target = batch.add_argument_group(group.title) if group.title not in ("options", "optional arguments",
                                                                              "positional arguments") else batch
        for action in actions:
            target._add_action(action)

    evaluate = commands.add_parser("eval", help="count the objects in every frame and score the videos as the "
                                   "NUMINA authors' evaluator does")
    evaluate.add_argument("--videos", required=True,
                          help="a folder of NNN_*.mp4, or a `batch` --out-dir (every <mode>/seed<k> in it)")
    evaluate.add_argument("--prompts", required=True, help="the prompt file the videos were made from")
    evaluate.add_argument("--counts", required=True, help="the counts file (noun_counts.jsonl)")
    evaluate.add_argument("--detector", choices=("grounding-dino", "demo-counter"), default="grounding-dino",
                          help="grounding-dino (the authors' detector, from --detector-dir) or demo-counter (the "
                               "demo model's world, counted exactly); default grounding-dino")
    evaluate.add_argument("--detector-dir", default=None,
                          help="local transformers GroundingDINO checkpoint, e.g. IDEA-Research/grounding-dino-tiny")
    evaluate.add_argument("--device", default=None, help="where the detector runs (default: cuda when available)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="frames per detector call (default 8)")

    compare = commands.add_parser("compare", help="plain vs NUMINA: per seed, mean and spread, paired per prompt")
    compare.add_argument("a", help="evaluated videos of one side, e.g. OUT/plain (seed<k>/eval_results.json)")
    compare.add_argument("b", help="the other side, e.g. OUT/numina; differences are B - A")
    compare.add_argument("--names", nargs=2, default=None, metavar=("A", "B"),
                         help="column names (default: folder names)")
    compare.add_argument("--out", default=None, help="also write the comparison as JSON to this file")


def parse_counts_json(text: str) -> dict[str, int]:
    """--counts JSON -> {noun: count}; malformed JSON is an error that points at the bad character."""
    if not text.strip():
        raise UserInputError('--counts is empty: give a JSON object like {"cats": 3}, or leave --counts out '
                             "to count the nouns of the prompt")
    try:
        counts = json.loads(text)
    except json.JSONDecodeError as err:
        pointer = " " * err.pos + "^"
        raise UserInputError(f"--counts is not valid JSON ({err.msg} at character {err.pos + 1}):\n"
                             f"  {text}\n  {pointer}\n"
                             f'expected an object like {{"cats": 3, "dogs": 2}}') from None
    if not isinstance(counts, dict) or not counts:
        raise UserInputError(f'--counts must be a non-empty JSON object like {{"cats": 3}}, got {text}')
    return counts


def _default_out_dir(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "video"
    return Path("outputs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"


def _writable(folder: Path) -> bool:
    """Whether files can be made in `folder`: the OS allows it and the folder is not marked read-only
    (no write bit: refused even for root, who could write there anyway)."""
    return os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out-dir that cannot take this run's outputs. Makes nothing: the
    folder is made when the outputs are saved (and removed again if saving fails)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"--out-dir {out_dir} is a file, not a folder: choose a folder path (it is made "
                             f"if missing)")
    existing = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise UserInputError(f"{out_dir} already holds {', '.join(existing)}; choose another --out-dir "
                             f"or pass --overwrite to replace them")
    folder = out_dir.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserInputError(f"--out-dir {out_dir} cannot be made: {folder} is a file, not a folder")
    if not _writable(folder):
        where = "is" if folder == out_dir.absolute() else f"would be made in {folder}, which is"
        raise UserInputError(f"--out-dir {out_dir} {where} read-only: choose a folder you can write to")


def _build_request(args):
    from .engine.settings import GenerationRequest, check_request_values

    request = GenerationRequest(prompt=args.prompt, seed=args.seed, numina=not args.no_numina,
                                counts=parse_counts_json(args.counts) if args.counts is not None else None,
                                cache_steps=args.cache_steps,
                                **_shared_request_options(args))
    check_request_values(request)
    return request


def _set_cpu_threads(device, settings) -> None:
    """Tiny videos on the CPU run fastest on CPU_THREADS threads, unless the user chose (OMP_NUM_THREADS)."""
    import torch

    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and settings.width * settings.height <= TINY_PIXELS:
        torch.set_num_threads(min(CPU_THREADS, torch.get_num_threads()))   # measured on 2 cores only


def _run(args) -> int:
    # Imported here so that `--help` and argument errors answer at once.
    from .api import Engine
    from .engine.loading import resolve_device

    from .engine import parallel
    from .workflow import distributed

    # Everything that needs no model is checked before the model loads (5-25 s).
    request = _build_request(args)
    world_size = parallel.world_size_from_env()
    plan = None
    if world_size > 1 or args.parallel is not None:        # the split, against the checkpoint's head count
        plan = parallel.choose_plan(world_size, parallel.read_dit_config(args.ckpt_dir).num_heads,
                                    parallel.parse_parallel(args.parallel))
    out_dir = Path(args.out_dir) if args.out_dir else _default_out_dir(args.prompt)
    check_out_dir(out_dir, args.overwrite)
    ranks = distributed.start(args.device)
    try:
        device = resolve_device(ranks.device)
        engine = Engine.load(args.ckpt_dir, device=device, cuda_graphs=not args.no_cuda_graphs,
                             offload=args.offload, attention=args.attention)
        if world_size > 1:
            engine.model = parallel.parallelize(engine.model, plan, ranks.rank)
        prepared = engine.check(request)            # sizes, nouns, NUMINA settings against this model
        if engine.model.defaults.note and ranks.is_main:
            print(f"note: {engine.model.defaults.note}", file=sys.stderr)
        if request.numina and prepared.config is None and ranks.is_main:
            print("note: NUMINA skipped: the prompt has no counted noun (e.g. \"three cats\"); running plain "
                  "generation. Pass --counts to name nouns to count.", file=sys.stderr)
        _set_cpu_threads(device, prepared.settings)
        result = engine.generate(request, progress=not args.quiet and ranks.is_main, prepared=prepared)
        if ranks.is_main:                           # every rank holds the same video
            if world_size > 1:
                result.report["parallel"] = {"plan": plan.describe(), "ranks": world_size,
                                             "note": "CUDA graphs are not used under --parallel"}
            paths = engine.save(result, out_dir, preview=True)
            print(json.dumps({name: str(path) for name, path in paths.items()}))
    finally:
        distributed.stop(ranks)
    return 0


def _counts(args) -> int:
    from .numina.prompt_counts import parse_counts

    print(json.dumps(parse_counts(args.prompt), ensure_ascii=False))
    return 0


def _shared_request_options(args) -> dict:
    """GenerationRequest fields of the options `run` and `batch` share (BATCH_SHARED_OPTIONS)."""
    from .engine.settings import parse_size

    width, height = parse_size(args.size) if args.size is not None else (None, None)
    overrides = {name: value for name, value in (("reference_step", args.reference_step),
                                                 ("reference_layer", args.reference_layer),
                                                 ("mode", args.numina_mode),
                                                 ("token_scope", args.token_scope)) if value is not None}
    options = {"width": width, "height": height, "frames": args.frames, "steps": args.steps,
               "guide_scale": args.guide_scale, "shift": args.shift, "numina_overrides": overrides}
    if args.negative_prompt is not None:
        options["negative_prompt"] = args.negative_prompt
    return options


def _batch(args) -> int:
    from .api import Engine
    from .workflow import distributed
    from .workflow.batch import plan_jobs, run_batch
    from .workflow.prompt_files import read_benchmark

    items = read_benchmark(args.prompts, args.counts)       # bad lines fail before the model loads
    options = _shared_request_options(args)
    ranks = distributed.start(args.device)
    try:
        engine = Engine.load(args.ckpt_dir, device=ranks.device, cuda_graphs=not args.no_cuda_graphs,
                             offload=args.offload, attention=args.attention)
        if engine.model.defaults.note and ranks.is_main:
            print(f"note: {engine.model.defaults.note}", file=sys.stderr)
        jobs = plan_jobs(engine, items, args.modes, args.seeds, options, video_format=args.video_format)
        summary = run_batch(engine, jobs, Path(args.out_dir), options, ranks, progress=not args.quiet)
    finally:
        distributed.stop(ranks)
    if ranks.is_main:
        print(json.dumps({"videos": summary.total, "skipped": summary.skipped, "made_by_rank_0": summary.made,
                          "seconds": round(summary.seconds, 1), "index": str(Path(args.out_dir) / "index.jsonl")}))
    return 0


def _eval(args) -> int:
    from .workflow.detectors import DemoWorldCounter, GroundingDinoCounter, check_grounding_dino_dir
    from .workflow.evaluate import evaluate_videos
    from .workflow.prompt_files import read_benchmark

    items = read_benchmark(args.prompts, args.counts)
    if args.detector == "grounding-dino":
        check_grounding_dino_dir(args.detector_dir)             # before the transformers import
        counter = GroundingDinoCounter(args.detector_dir, device=args.device, batch_size=args.batch_size)
    else:
        counter = DemoWorldCounter()
    summary = evaluate_videos(args.videos, items, counter)
    print(json.dumps({label: round(folder["overall_accuracy"], 4) for label, folder in summary["folders"].items()}))
    return 0


def _compare(args) -> int:
    from .api import write_json_atomic
    from .workflow.compare import compare_results, format_table, load_results

    names = args.names or [Path(args.a).name, Path(args.b).name]
    comparison = compare_results(load_results(args.a), load_results(args.b))
    print(format_table(comparison, *names))
    if args.out:
        write_json_atomic(Path(args.out), {"a": str(args.a), "b": str(args.b), "names": names, **comparison})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "counts":
            return _counts(args)
        workflow = {"batch": _batch, "eval": _eval, "compare": _compare}
        if args.command in workflow:
            return workflow[args.command](args)
    except (UserInputError, CheckpointError) as err:
        print(f"numina-engine: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # run: outputs are written all at once at the end (Engine.save), and removed if that is interrupted;
        # batch keeps the videos it finished (a second invocation resumes)
        said = ("interrupted, nothing written" if args.command == "run" else
                "interrupted; finished videos are kept, run the same command again to resume"
                if args.command == "batch" else "interrupted")
        print(f"numina-engine: {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1


if __name__ == "__main__":
    sys.exit(main())
