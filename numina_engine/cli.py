"""`numina-engine` command line: `run` makes a video, `counts` shows what NUMINA would count."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from .errors import CheckpointError, UserInputError
from .numina.config import DEFAULT_MODE, MODES


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--prompt", required=True, help="what the video shows, e.g. \"Three cats chasing two dogs\"")
    run.add_argument("--ckpt-dir", default=None,
                     help="Wan2.1-T2V checkpoint folder (official or diffusers layout); "
                          "default: the embedded demo model")
    run.add_argument("--size", default=None, help="WIDTH*HEIGHT, multiples of one token, 16 px for Wan2.1 "
                     "(default: the model's; Wan2.1 832*480, the demo model 32*32)")
    run.add_argument("--frames", type=int, default=None, help="frames, 4n+1 for Wan2.1's VAE "
                     "(default: the model's; Wan2.1 81, the demo model 5)")
    run.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's; Wan2.1 50, the demo model 20)")
    run.add_argument("--guide-scale", type=float, default=None, help="classifier-free guidance scale (default 5.0)")
    run.add_argument("--shift", type=float, default=None, help="flow-matching sigma shift (default 5.0)")
    run.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    run.add_argument("--negative-prompt", default=None, help="default: Wan2.1's own negative prompt")
    run.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    run.add_argument("--out-dir", default=None,
                     help="folder for video.mp4 and report.json (default: outputs/<time>-<prompt>)")
    run.add_argument("--overwrite", action="store_true", help="replace video.mp4/report.json already in --out-dir")
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
    numina.add_argument("--reference-step", type=int, default=None, help="phase-1 step to extract at (default 20)")
    numina.add_argument("--reference-layer", type=int, default=None, help="DiT block to extract at (default 15)")
    numina.add_argument("--numina-mode", choices=MODES, default=None,
                        help="'authors': reproduce the NUMINA authors' code rule by rule; 'engine': the engine's "
                             "own rules (README, Known differences). Default: the model's, else "
                             f"'{DEFAULT_MODE}'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numina-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run_arguments(commands.add_parser("run", help="generate a video"))
    counts = commands.add_parser("counts", help="print the nouns NUMINA counts in a prompt, as one JSON line")
    counts.add_argument("prompt")
    return parser


def parse_counts_json(text: str) -> dict[str, int]:
    """--counts JSON -> {noun: count}; malformed JSON is an error that points at the bad character."""
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


def _prepare_out_dir(args) -> Path:
    out_dir = Path(args.out_dir) if args.out_dir else _default_out_dir(args.prompt)
    existing = [name for name in ("video.mp4", "report.json") if (out_dir / name).exists()]
    if existing and not args.overwrite:
        raise UserInputError(f"{out_dir} already holds {', '.join(existing)}; choose another --out-dir "
                             f"or pass --overwrite to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _run(args) -> int:
    # Imported here so that `--help` and argument errors answer at once.
    from .api import Engine
    from .engine.settings import GenerationRequest, parse_size

    width, height = parse_size(args.size) if args.size else (None, None)
    overrides = {name: value for name, value in (("reference_step", args.reference_step),
                                                 ("reference_layer", args.reference_layer),
                                                 ("mode", args.numina_mode)) if value is not None}
    request = GenerationRequest(prompt=args.prompt, seed=args.seed, width=width, height=height,
                                frames=args.frames, steps=args.steps, guide_scale=args.guide_scale,
                                shift=args.shift, numina=not args.no_numina,
                                counts=parse_counts_json(args.counts) if args.counts else None,
                                numina_overrides=overrides)
    if args.negative_prompt is not None:
        request.negative_prompt = args.negative_prompt
    engine = Engine.load(args.ckpt_dir, device=args.device, cuda_graphs=not args.no_cuda_graphs,
                         offload=args.offload)
    engine.check(request)                       # bad sizes etc. fail before the output folder is made
    out_dir = _prepare_out_dir(args)
    if engine.model.defaults.note:
        print(f"note: {engine.model.defaults.note}", file=sys.stderr)
    result = engine.generate(request, progress=not args.quiet)
    paths = engine.save(result, out_dir)
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
    return 1


if __name__ == "__main__":
    sys.exit(main())
