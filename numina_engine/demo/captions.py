"""Captions of counting-world scenes, and the counted nouns they name.

"Three apples and two trees drifting left."
"A single shiny ring moving up."
"There is a pair of boxes and four bright gems sliding to the right."

A kind's noun names the object (its colour and shape follow from it); it is singular for one object
and plural otherwise, and the same surface form is the key of scene_counts and of
prompt_counts.parse_counted_nouns. An optional attribute ("shiny", "bright", ...) changes nothing
in the picture: it only varies the wording around the noun.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .scenes import KINDS, Kind, Scenes, WorldConfig, sample_scenes

NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
ATTRIBUTES = ("shiny", "bright", "lovely", "fancy")
ATTRIBUTE_PROBABILITY = 0.3
MOTION_VERBS = ("drifting", "moving", "sliding")
DIRECTION_PHRASES = {
    "left": ("left", "to the left"),
    "right": ("right", "to the right"),
    "up": ("up", "upward"),
    "down": ("down", "downward"),
}
BACKGROUND_PHRASE = "on a dark background"
# Below this speed (pixels per frame) a clip is still and its caption names no motion.
STILL_SPEED = 0.2
_VOCABULARY_BATCH = 1000


def kind_noun(kind: Kind, count: int) -> str:
    """The noun of `count` objects of `kind`: "apple" for one, "apples" for more."""
    return kind.noun if count == 1 else kind.plural


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

    scene_kinds: 1 or 2 (Kind, count), as in Scenes.kinds.
    velocity: (x, y) drift, pixels per frame.
    rng: draws the wording (count words, attributes, order of the kinds, motion words, template).
    """
    kinds = list(scene_kinds)
    if len(kinds) == 2 and rng.random() < 0.5:
        kinds.reverse()
    phrases = [_kind_phrase(kind, count, rng) for kind, count in kinds]
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
    """Per scene, {noun as its captions write it: count}, e.g. {"apples": 3, "tree": 1}."""
    return [{kind_noun(kind, count): count for kind, count in kinds} for kinds in scenes.kinds]


def scene_colour_of_noun(scenes: Scenes) -> list[dict[str, str]]:
    """Per scene, {noun as its captions write it: colour name}, the keys of scene_counts."""
    return [{kind_noun(kind, count): kind.colour for kind, count in kinds} for kinds in scenes.kinds]


def count_phrases(text: str) -> dict[str, str]:
    """{noun: its count phrase} of a caption, read with the world's own grammar (count words, an
    optional attribute, the noun), as prompt_counts.parse_counted_nouns reads them: the bare article
    left out ("an apple" -> "apple"), "a" of "a pair of"/"a single" too ("pair of boxes")."""
    nouns = "|".join(sorted({k.noun for k in KINDS} | {k.plural for k in KINDS}, key=len, reverse=True))
    counts = "|".join(("a pair of", "a single", *NUMBER_WORDS, "an", "a"))
    pattern = rf"\b({counts}) ((?:(?:{'|'.join(ATTRIBUTES)}) )?({nouns}))\b"
    phrases = {}
    for match in re.finditer(pattern, text, flags=re.IGNORECASE):
        count_word, rest, noun = match.groups()
        lead = count_word.lower()
        if lead in ("a", "an"):
            phrases[noun] = rest
        else:
            phrases[noun] = (count_word[2:] if lead.startswith("a ") else count_word) + " " + rest
    return phrases


def caption_vocabulary() -> frozenset[str]:
    """Every lower-case word a caption can use."""
    words = {"a", "an", "single", "pair", "of", "and", "there", "is", "are"}
    words |= set(NUMBER_WORDS) | set(ATTRIBUTES) | {k.noun for k in KINDS} | {k.plural for k in KINDS}
    words |= set(MOTION_VERBS) | set(BACKGROUND_PHRASE.split())
    for phrases in DIRECTION_PHRASES.values():
        for phrase in phrases:
            words |= set(phrase.split())
    return frozenset(words)


def caption_words(text: str) -> list[str]:
    """The lower-case words of a caption, punctuation dropped."""
    return re.findall(r"[a-z]+", text.lower())


def vocabulary_sentences(n: int, seed: int, config: WorldConfig = WorldConfig()) -> list[str]:
    """Captions of sampled scenes that together use every word a caption can use, for training a
    tokenizer: the first n, or more when those miss a word (then the shortest run of captions that
    has them all). Scenes are drawn in batches of 1000 with seeds seed, seed + 1, ...
    """
    needed = set(caption_vocabulary())
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


def _kind_phrase(kind: Kind, count: int, rng: np.random.Generator) -> str:
    """ "three apples", "a pair of shiny boxes", "a single tree", "an apple", "a bright gem"."""
    attribute = ATTRIBUTES[rng.integers(len(ATTRIBUTES))] if rng.random() < ATTRIBUTE_PROBABILITY else ""
    words = f"{attribute} {kind_noun(kind, count)}".strip()
    if count == 1:
        article = "an" if words[0] in "aeiou" else "a"
        counts = ("one", "a single", article)
    elif count == 2:
        counts = ("two", "a pair of")
    else:
        counts = (NUMBER_WORDS[count - 1],)
    return f"{counts[rng.integers(len(counts))]} {words}"
