"""Scenes of the counting world: its kinds of objects, the world's settings, and seeded scene sampling.

Each kind of object is named by a noun that fixes its look, as "cats" and "dogs" do in real prompts:
an apple is a red circle, a tree a green triangle, a ring a yellow ring, a box a blue
square, a gem a cyan diamond, a flower a magenta cross. A caption names the noun, never the colour
or the shape, so the noun's tokens are where the model must put the object's identity.

A scene is 1 or 2 kinds of objects on a dark background, (kind, count) each. All objects of a clip
drift with one shared velocity, so objects that do not touch in frame 0 touch in no frame.

Coordinates are pixels: x to the right, y down; pixel (row i, column j) covers
[j, j + 1) x [i, i + 1) and is sampled at its centre (j + 0.5, i + 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Corners of the RGB cube: any two are at least 255 apart, and 233 from the background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
BACKGROUND: tuple[int, int, int] = (24, 24, 24)
SHAPES = ("circle", "square", "triangle", "ring", "diamond", "cross")
# A square's half side, as a fraction of the object's radius (its area then matches a circle's).
SQUARE_HALF_SIDE = 0.85
# A ring's hole: inner radius, as a fraction of the outer radius.
RING_INNER = 0.5
# A cross's arms: half width, as a fraction of the radius (the arms reach the radius).
CROSS_HALF_WIDTH = 0.35
# Area of each shape in units of radius**2 (see rendering.object_masks for the geometry).
SHAPE_AREA_PER_RADIUS2 = {"circle": math.pi, "square": (2 * SQUARE_HALF_SIDE) ** 2, "triangle": 2.0,
                          "ring": math.pi * (1 - RING_INNER ** 2), "diamond": 2.0,
                          "cross": 2 * (2 * CROSS_HALF_WIDTH * 2) - (2 * CROSS_HALF_WIDTH) ** 2}


@dataclass(frozen=True)
class Kind:
    """A kind of object: the noun that names it (singular, plural) and its look."""
    noun: str
    plural: str
    colour: str      # a COLOURS key
    shape: str       # a SHAPES entry


KINDS: tuple[Kind, ...] = (
    Kind("apple", "apples", "red", "circle"),
    Kind("tree", "trees", "green", "triangle"),
    Kind("ring", "rings", "yellow", "ring"),
    Kind("box", "boxes", "blue", "square"),
    Kind("gem", "gems", "cyan", "diamond"),
    Kind("flower", "flowers", "magenta", "cross"),
)


def kind_of_noun(noun: str) -> Kind | None:
    """The kind a noun names, singular or plural, any case ("Apples" -> apple); None for other words."""
    word = noun.lower()
    return next((k for k in KINDS if word in (k.noun, k.plural)), None)
# Moving directions, as unit velocities (x, y); y grows downwards.
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
_MAX_PLACEMENT_ROUNDS = 1000
_CANDIDATES_PER_OBJECT = 32
_CANDIDATE_ROUNDS = 8
_SCENES_PER_CHUNK = 4096


@dataclass(frozen=True)
class WorldConfig:
    """Settings of the counting world.

    size: frame height = width, pixels.
    frames: frames per clip.
    min_objects, max_objects: range of the total object count of a scene (both included).
    radius_range: an object's radius, pixels (uniform): it spans 2 * radius across, and fits in
        the axis-aligned square of half side `radius` around its centre (its bounding square).
    min_gap: pixels of background between the bounding squares of any two objects, so centres
        are at least r_i + r_j + min_gap apart in max(|dx|, |dy|). Above 1, rendered objects are
        separated by at least one background pixel in all 8 directions.
    speed_range: drift speed of a moving clip, pixels per frame (uniform).
    still_probability: probability that a clip does not move.
    two_kinds_probability: probability that a scene of 2 or more objects has two kinds.
    """

    size: int = 32
    frames: int = 5
    min_objects: int = 1
    max_objects: int = 6
    radius_range: tuple[float, float] = (4.0, 4.25)
    min_gap: float = 1.5
    speed_range: tuple[float, float] = (0.25, 0.6)
    still_probability: float = 0.2
    two_kinds_probability: float = 0.5

    def __post_init__(self):
        if self.size < 1 or self.frames < 1:
            raise ValueError(f"size and frames must be >= 1, got size={self.size}, frames={self.frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError("need 1 <= min_objects <= max_objects <= 6 (captions spell counts up to "
                             f"six), got {self.min_objects}..{self.max_objects}")
        low, high = self.radius_range
        if not 0 < low <= high or 2 * high > self.size:
            raise ValueError(f"radius_range must satisfy 0 < low <= high <= size/2, got {self.radius_range}")
        if self.min_gap <= 1:
            raise ValueError(f"min_gap must be > 1 pixel so that objects never touch, got {self.min_gap}")
        low, high = self.speed_range
        if not 0 <= low <= high:
            raise ValueError(f"speed_range must satisfy 0 <= low <= high, got {self.speed_range}")
        if 2 * self.radius_range[1] + (self.frames - 1) * high > self.size:
            raise ValueError("an object of the largest radius moving at the top speed leaves the frame: "
                             f"2 * {self.radius_range[1]} + {self.frames - 1} * {high} > {self.size}")
        for name in ("still_probability", "two_kinds_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class Scenes:
    """A batch of N scenes with K = config.max_objects object slots each (CPU tensors).

    kind: int64 [N, K], index into KINDS; -1 in unused slots.
    valid: bool [N, K], whether a slot holds an object (the first `total` slots do).
    centre: float32 [N, K, 2], (x, y) of each object's centre in frame 0, pixels; 0 when unused.
    radius: float32 [N, K], pixels; 0 when unused.
    velocity: float32 [N, 2], (x, y) drift shared by all objects of a scene, pixels per frame.
    kinds: per scene, a tuple of 1 or 2 (Kind, count).
    """

    kind: torch.Tensor
    valid: torch.Tensor
    centre: torch.Tensor
    radius: torch.Tensor
    velocity: torch.Tensor
    kinds: list[tuple[tuple[Kind, int], ...]]

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def colour(self) -> torch.Tensor:
        """int64 [N, K], index into COLOURS of each object's colour; -1 in unused slots."""
        table = torch.tensor([list(COLOURS).index(k.colour) for k in KINDS])
        return torch.where(self.valid, table[self.kind.clamp(min=0)], -1)

    @property
    def shape(self) -> torch.Tensor:
        """int64 [N, K], index into SHAPES of each object's shape; -1 in unused slots."""
        table = torch.tensor([SHAPES.index(k.shape) for k in KINDS])
        return torch.where(self.valid, table[self.kind.clamp(min=0)], -1)

    def subset(self, index: torch.Tensor) -> "Scenes":
        """The scenes at `index` (int64 [B], CPU)."""
        rows = index.tolist()
        return Scenes(kind=self.kind[index], valid=self.valid[index], centre=self.centre[index],
                      radius=self.radius[index], velocity=self.velocity[index],
                      kinds=[self.kinds[i] for i in rows] if self.kinds else [])


def minimum_object_area(config: WorldConfig = WorldConfig()) -> float:
    """The smallest area an object of this world can have, pixels (shape at the smallest radius)."""
    return min(SHAPE_AREA_PER_RADIUS2.values()) * config.radius_range[0] ** 2


def sample_scenes(n: int, seed: int, config: WorldConfig = WorldConfig()) -> Scenes:
    """n scenes drawn from the world, the same for the same (n, seed, config) on any machine.

    Totals are uniform over min_objects..max_objects. Objects are placed by rejection sampling
    (one object after the other, each among a few random candidates; a scene where an object
    finds no place starts again), inside the frame in every frame of the drift.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    k_slots = config.max_objects
    totals = rng.integers(config.min_objects, config.max_objects + 1, size=n)
    two_kinds = (totals >= 2) & (rng.random(n) < config.two_kinds_probability)
    first_count = np.where(two_kinds, 1 + np.floor(rng.random(n) * (totals - 1)).astype(np.int64), totals)
    kind_pairs = _distinct_pairs(rng, n, len(KINDS))
    velocity = _sample_velocity(rng, n, config)
    radius = rng.uniform(*config.radius_range, size=(n, k_slots))

    slot = np.arange(k_slots)[None, :]
    valid = slot < totals[:, None]
    second = slot >= first_count[:, None]
    kind = np.where(valid, np.where(second, kind_pairs[:, 1:], kind_pairs[:, :1]), -1)
    radius = np.where(valid, radius, 0.0)
    centre = _place_objects(rng, radius, valid, velocity, config)

    kinds = []
    for i in range(n):
        scene = [(KINDS[kind_pairs[i, 0]], int(first_count[i]))]
        if two_kinds[i]:
            scene.append((KINDS[kind_pairs[i, 1]], int(totals[i] - first_count[i])))
        kinds.append(tuple(scene))
    return Scenes(
        kind=torch.from_numpy(kind.astype(np.int64)),
        valid=torch.from_numpy(valid),
        centre=torch.from_numpy(centre.astype(np.float32)),
        radius=torch.from_numpy(radius.astype(np.float32)),
        velocity=torch.from_numpy(velocity.astype(np.float32)),
        kinds=kinds,
    )


def _distinct_pairs(rng: np.random.Generator, n: int, choices: int) -> np.ndarray:
    """int64 [n, 2]: two different indices in 0..choices-1 per row, uniform over ordered pairs."""
    first = rng.integers(0, choices, size=n)
    second = (first + rng.integers(1, choices, size=n)) % choices
    return np.stack([first, second], axis=1)


def _sample_velocity(rng: np.random.Generator, n: int, config: WorldConfig) -> np.ndarray:
    """float64 [n, 2], pixels per frame: still, or one of DIRECTIONS at a speed in speed_range."""
    directions = np.array(list(DIRECTIONS.values()))
    direction = directions[rng.integers(0, len(directions), size=n)]
    speed = rng.uniform(*config.speed_range, size=n)
    moving = rng.random(n) >= config.still_probability
    return direction * (speed * moving)[:, None]


def _place_objects(rng: np.random.Generator, radius: np.ndarray, valid: np.ndarray,
                   velocity: np.ndarray, config: WorldConfig) -> np.ndarray:
    """float64 [N, K, 2] frame-0 centres: every object inside the frame in all frames, bounding
    squares at least config.min_gap apart. Unused slots get (0, 0)."""
    centre = np.zeros(radius.shape + (2,))
    for start in range(0, len(radius), _SCENES_PER_CHUNK):
        chunk = slice(start, start + _SCENES_PER_CHUNK)
        pending = np.arange(len(radius))[chunk]
        for _ in range(_MAX_PLACEMENT_ROUNDS):
            if len(pending) == 0:
                break
            placed, ok = _try_place(rng, radius[pending], valid[pending], velocity[pending], config)
            centre[pending[ok]] = placed[ok]
            pending = pending[~ok]
        else:
            raise RuntimeError(f"could not place the objects of {len(pending)} scenes in "
                               f"{_MAX_PLACEMENT_ROUNDS} tries: the config is too dense ({config})")
    return centre


def _try_place(rng, radius, valid, velocity, config):
    """One placement attempt per scene: (centres float64 [P, K, 2], success bool [P]).

    Objects are placed in slot order, each at the first free one of up to
    _CANDIDATE_ROUNDS * _CANDIDATES_PER_OBJECT uniform candidates; a scene fails (and stops
    being worked on) when an object finds none.
    """
    n, k_slots = radius.shape
    travel = (config.frames - 1) * velocity[:, None, :]                      # [P, 1, 2]
    low = radius[..., None] - np.minimum(travel, 0.0)                         # [P, K, 2]
    high = config.size - radius[..., None] - np.maximum(travel, 0.0)
    centre = np.zeros((n, k_slots, 2))
    ok = np.ones(n, dtype=bool)
    for k in range(k_slots):
        todo = np.flatnonzero(ok & valid[:, k])
        for _ in range(_CANDIDATE_ROUNDS):
            if len(todo) == 0:
                break
            u = rng.random((len(todo), _CANDIDATES_PER_OBJECT, 2))
            lo, hi = low[todo, None, k], high[todo, None, k]
            candidates = lo + u * (hi - lo)                                      # [T, C, 2]
            placed = centre[todo, None, :k]                                      # [T, 1, k, 2]
            needed = radius[todo, None, k, None] + radius[todo, None, :k] + config.min_gap
            apart = ((np.abs(candidates[:, :, None, 0] - placed[..., 0]) >= needed)
                     | (np.abs(candidates[:, :, None, 1] - placed[..., 1]) >= needed))
            free = apart.all(axis=-1)                                            # [T, C]
            found = free.any(axis=1)
            centre[todo[found], k] = candidates[found, free[found].argmax(axis=1)]
            todo = todo[~found]
        ok[todo] = False
    return centre, ok
