"""`numina-engine` command line: `run` makes a video, `counts` shows what NUMINA would count."""
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
# CPU threads for tiny shapes (the demo model): 1 was fastest, docs/results/cli_threads_cpu.json
# (bench/cli_threads.py). Used when OMP_NUM_THREADS is not set and the video is at most TINY_PIXELS.
CPU_THREADS = 1
TINY_PIXELS = 64 * 64
EXIT_INTERRUPTED = 130


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
    gpu.add_argument("--offload", action="store_true",
                     help="for small GPUs: the text encoder runs on the CPU and the DiT leaves the GPU "
                          "while the VAE decodes")
    gpu.add_argument("--no-cuda-graphs", action="store_true",
                     help="run the denoising steps eagerly instead of replaying CUDA graphs "
                          "(graphs are used on CUDA only)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numina-engine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("run", help="generate a video"))
    counts = commands.add_parser("counts", help="print the nouns NUMINA counts in a prompt, as one JSON line")
    counts.add_argument("prompt", help='the prompt to parse, e.g. "Three cats chasing two dogs" '
                                       '(prints {"cats": 3, "dogs": 2})')
    return parser


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
    from .engine.settings import GenerationRequest, check_request_values, parse_size

    width, height = parse_size(args.size) if args.size is not None else (None, None)
    overrides = {name: value for name, value in (("reference_step", args.reference_step),
                                                 ("reference_layer", args.reference_layer),
                                                 ("mode", args.numina_mode)) if value is not None}
    request = GenerationRequest(prompt=args.prompt, seed=args.seed, width=width, height=height,
                                frames=args.frames, steps=args.steps, guide_scale=args.guide_scale,
                                shift=args.shift, numina=not args.no_numina,
                                counts=parse_counts_json(args.counts) if args.counts is not None else None,
                                numina_overrides=overrides)
    if args.negative_prompt is not None:
        request.negative_prompt = args.negative_prompt
    check_request_values(request)
    return request


def _set_cpu_threads(device, settings) -> None:
    """Tiny videos on the CPU run fastest on CPU_THREADS threads, unless the user chose (OMP_NUM_THREADS)."""
    import torch

    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and settings.width * settings.height <= TINY_PIXELS:
        torch.set_num_threads(CPU_THREADS)


def _run(args) -> int:
    # Imported here so that `--help` and argument errors answer at once.
    from .api import Engine
    from .engine.loading import resolve_device

    # Everything that needs no model is checked before the model loads (5-25 s).
    request = _build_request(args)
    device = resolve_device(args.device)
    out_dir = Path(args.out_dir) if args.out_dir else _default_out_dir(args.prompt)
    check_out_dir(out_dir, args.overwrite)
    engine = Engine.load(args.ckpt_dir, device=device, cuda_graphs=not args.no_cuda_graphs, offload=args.offload)
    prepared = engine.check(request)            # sizes, nouns, NUMINA settings against this model
    if engine.model.defaults.note:
        print(f"note: {engine.model.defaults.note}", file=sys.stderr)
    if request.numina and prepared.config is None:
        print("note: NUMINA skipped: the prompt has no counted noun (e.g. \"three cats\"); running plain "
              "generation. Pass --counts to name nouns to count.", file=sys.stderr)
    _set_cpu_threads(device, prepared.settings)
    result = engine.generate(request, progress=not args.quiet)
    paths = engine.save(result, out_dir, preview=True)
    print(json.dumps({name: str(path) for name, path in paths.items()}))
    return 0


def _counts(args) -> int:
    from .numina.prompt_counts import parse_counts

    print(json.dumps(parse_counts(args.prompt), ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "counts":
            return _counts(args)
    except (UserInputError, CheckpointError) as err:
        print(f"numina-engine: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs are written all at once at the end (Engine.save), and removed if that is interrupted.
        print("numina-engine: interrupted, nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1


if __name__ == "__main__":
    sys.exit(main())
