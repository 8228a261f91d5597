"""Captions of counting-world scenes, and the counted nouns they name.

"Three red circles and two blue squares drifting left."
"A single green triangle moving up."
"There is a pair of yellow squares and four magenta circles sliding to the right."

A shape is the noun of its kind, in the singular for one object and the plural otherwise; the
same surface form is the key of scene_counts and of prompt_counts.parse_counted_nouns.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .scenes import COLOURS, SHAPES, Scenes, WorldConfig, sample_scenes

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight")
MOTION_VERBS = ("drifting", "moving", "sliding")
DIRECTION_PHRASES = {
    "left": ("left", "to the left"),
    "right": ("right", "to the right"),
    "up": ("up", "upward"),
    "down": ("down", "downward"),
}
BACKGROUND_PHRASE = "on a dark background"
# Below this speed (pixels per frame) a clip is still and its caption names no motion.
STILL_SPEED = 0.25
_VOCABULARY_BATCH = 1000


def shape_noun(shape: str, count: int) -> str:
    """The noun of `count` objects of `shape`: "circle" for one, "circles" for more."""
    return shape if count == 1 else shape + "s"


def motion_direction(velocity) -> str | None:
    """The DIRECTIONS key of a velocity (x, y) in pixels per frame, y down; None when still."""
    vx, vy = (float(v) for v in velocity)
    if math.hypot(vx, vy) < STILL_SPEED:
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def caption(scene_kinds, velocity, rng: np.random.Generator) -> str:
    """A caption of one scene.

    scene_kinds: 1 or 2 (colour_name, shape_name, count), as in Scenes.kinds.
    velocity: (x, y) drift, pixels per frame.
    rng: draws the wording (count words, order of the kinds, motion words, template).
    """
    kinds = list(scene_kinds)
    if len(kinds) == 2 and rng.random() < 0.5:
        kinds.reverse()
    phrases = [_kind_phrase(colour, shape, count, rng) for colour, shape, count in kinds]
    objects = " and ".join(phrases)
    direction = motion_direction(velocity)
    motion = ""
    if direction is not None:
        verb = MOTION_VERBS[rng.integers(len(MOTION_VERBS))]
        words = DIRECTION_PHRASES[direction]
        motion = f" {verb} {words[rng.integers(len(words))]}"
    background = f" {BACKGROUND_PHRASE}" if rng.random() < 0.3 else ""
    if rng.random() < 0.25:
        singular = phrases[0].startswith(("a ", "an ", "one "))
        sentence = f"there {'is' if singular else 'are'} {objects}{motion}{background}"
    else:
        sentence = f"{objects}{motion}{background}"
    return sentence[0].upper() + sentence[1:] + "."


def captions(scenes: Scenes, seed: int) -> list[str]:
    """One caption per scene, the same for the same (scenes, seed)."""
    rng = np.random.default_rng(seed)
    velocity = scenes.velocity.tolist()
    return [caption(kinds, v, rng) for kinds, v in zip(scenes.kinds, velocity)]


def scene_counts(scenes: Scenes) -> list[dict[str, int]]:
    """Per scene, {shape noun as its captions write it: count}, e.g. {"circles": 3, "square": 1}."""
    return [{shape_noun(shape, count): count for _, shape, count in kinds} for kinds in scenes.kinds]


def scene_colour_of_noun(scenes: Scenes) -> list[dict[str, str]]:
    """Per scene, {shape noun as its captions write it: colour name}, the keys of scene_counts."""
    return [{shape_noun(shape, count): colour for colour, shape, count in kinds}
            for kinds in scenes.kinds]


def caption_vocabulary() -> frozenset[str]:
    """Every lower-case word a caption can use."""
    words = {"a", "an", "single", "pair", "of", "and", "there", "is", "are"}
    words |= set(NUMBER_WORDS) | set(COLOURS) | set(SHAPES) | {shape_noun(s, 2) for s in SHAPES}
    words |= set(MOTION_VERBS) | set(BACKGROUND_PHRASE.split())
    for phrases in DIRECTION_PHRASES.values():
        for phrase in phrases:
            words |= set(phrase.split())
    return frozenset(words)


def caption_words(text: str) -> list[str]:
    """The lower-case words of a caption, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def vocabulary_sentences(n: int, seed: int, config: WorldConfig = WorldConfig()) -> list[str]:
    """Captions of sampled scenes that together use every word a caption can use ("an" only
    when a colour name starts with a vowel), for training a tokenizer: the first n, or more when
    those miss a word (then the shortest run of captions that has them all).

    Scenes are drawn in batches of 1000 with seeds seed, seed + 1, ...
    """
    needed = {w for w in caption_vocabulary() if w != "an" or any(c[0] in "aeiou" for c in COLOURS)}
    sentences: list[str] = []
    seen: set[str] = set()
    batch_seed = seed
    while True:
        for sentence in captions(sample_scenes(_VOCABULARY_BATCH, batch_seed, config), batch_seed):
            if len(sentences) >= n and needed <= seen:
                return sentences
            sentences.append(sentence)
            seen.update(caption_words(sentence))
        batch_seed += 1


def _kind_phrase(colour: str, shape: str, count: int, rng: np.random.Generator) -> str:
    """ "three red circles", "a pair of yellow squares", "a single green triangle", "a blue square"."""
    if count == 1:
        article = "an" if colour[0] in "aeiou" else "a"
        words = ("one", "a single", article)
    elif count == 2:
        words = ("two", "a pair of")
    else:
        words = (NUMBER_WORDS[count - 1],)
    return f"{words[rng.integers(len(words))]} {colour} {shape_noun(shape, count)}"
