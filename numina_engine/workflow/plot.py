"""A small line plot drawn with PIL (matplotlib is not a dependency): one line per series over integer x."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..engine.video_io import atomic_output

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
WIDTH, HEIGHT = 640, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 150, 40, 50


def write_line_plot(path: str | Path, series: dict[str, dict[int, float]], *, title: str, x_label: str,
                    y_label: str) -> None:
    """PNG at `path`: each series {x: y} (y in [0, 1]) as a line with dots, a legend at the right.

    series: {name: {x: y}}, at least one point in all; x are integers (e.g. target counts).
    """
    xs = sorted({x for points in series.values() for x in points})
    if not xs:
        raise ValueError("nothing to plot: every series is empty")
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x_min, x_max = xs[0], max(xs[-1], xs[0] + 1)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (x - x_min) / (x_max - x_min) * plot_w, TOP + (1.0 - y) * plot_h)

    draw.rectangle([LEFT, TOP, LEFT + plot_w, TOP + plot_h], outline="black")
    for y in np.linspace(0.0, 1.0, 6):
        _, py = to_pixel(x_min, y)
        draw.line([LEFT, py, LEFT + plot_w, py], fill=(225, 225, 225))
        draw.text((LEFT - 8, py), f"{y:.1f}", fill="black", font=font, anchor="rm")
    for x in xs:
        px, _ = to_pixel(x, 0.0)
        draw.line([px, TOP + plot_h, px, TOP + plot_h + 4], fill="black")
        draw.text((px, TOP + plot_h + 8), str(x), fill="black", font=font, anchor="mt")
    draw.text((LEFT + plot_w / 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text((LEFT + plot_w / 2, HEIGHT - 14), x_label, fill="black", font=font, anchor="mb")
    draw.text((8, TOP - 14), y_label, fill="black", font=font)
    for number, (name, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        pixels = [to_pixel(x, points[x]) for x in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        ly = TOP + 10 + 18 * number
        draw.line([WIDTH - RIGHT + 15, ly, WIDTH - RIGHT + 40, ly], fill=colour, width=2)
        draw.text((WIDTH - RIGHT + 46, ly), name, fill="black", font=font, anchor="lm")
    with atomic_output(path, ".png") as temp:
        image.save(temp, format="PNG")
