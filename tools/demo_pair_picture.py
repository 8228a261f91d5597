"""A picture for README: the same prompt and noise, plain Wan vs NUMINA, on the embedded demo model.

    python tools/demo_pair_picture.py --prompt "Three apples and two trees drifting left." --seed 0 \
        --out docs/demo_pair.png

Two rows of the video's frames, upscaled (row 1 plain, row 2 NUMINA), each row titled with the counts
the world's exact counter finds in every frame; NUMINA's layout.png is written next to the picture
(<out stem>_layout.png). Runs on the CPU in well under a minute.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from numina_engine import Engine, GenerationRequest
from numina_engine.demo.counter import count_world_nouns
from numina_engine.numina.prompt_counts import parse_counts

SCALE = 6
GAP = 4
TITLE = 18


def row_image(frames: np.ndarray, title: str) -> Image.Image:
    """One titled row of upscaled frames (uint8 [T, H, W, 3])."""
    t, h, w, _ = frames.shape
    row = Image.new("RGB", (t * (w * SCALE + GAP) - GAP, TITLE + h * SCALE), "white")
    for i, frame in enumerate(frames):
        tile = Image.fromarray(frame).resize((w * SCALE, h * SCALE), Image.NEAREST)
        row.paste(tile, (i * (w * SCALE + GAP), TITLE))
    ImageDraw.Draw(row).text((2, 3), title, fill="black")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    engine = Engine.load(device="cpu")
    counts = parse_counts(args.prompt)
    rows, counted = [], {}
    for label, numina in (("plain", False), ("NUMINA", True)):
        result = engine.generate(GenerationRequest(prompt=args.prompt, seed=args.seed, numina=numina), progress=False)
        frames = result.frames.numpy()
        counted[label] = count_world_nouns(frames, list(counts))
        per_frame = ", ".join(f"{noun} {counted[label][noun]}" for noun in counts)
        rows.append(row_image(frames, f"{label}: {per_frame} (asked: {json.dumps(counts)})"))
        if numina and result.layout is not None:
            layout_dir = args.out.parent / f"{args.out.stem}_run"
            engine.save(result, layout_dir)
    width = max(r.width for r in rows)
    picture = Image.new("RGB", (width, sum(r.height for r in rows) + GAP), "white")
    picture.paste(rows[0], (0, 0))
    picture.paste(rows[1], (0, rows[0].height + GAP))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(json.dumps({"prompt": args.prompt, "seed": args.seed, "counts_asked": counts, "counted": counted}))


if __name__ == "__main__":
    main()
