"""Noun -> token positions on a small SentencePiece T5 tokenizer trained here."""
from __future__ import annotations

import io
import random
import re
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, T5Tokenizer

from assets_paths import TINY_WAN
from full_stack import requires_full_stack
from numina_engine.demo.world import ATTRIBUTES, KINDS, NUMBER_WORDS, captions, sample_scenes, scene_counts
from numina_engine.errors import UserInputError
from numina_engine.numina.prompt_counts import CountedNoun
from numina_engine.numina.token_mapping import map_noun_tokens

# Frequent words become whole pieces; the rare ones split into several ("▁", "E", "x", "ca", ...).
_COMMON_WORDS = (
    "two cats and three dogs play in the park . A man walks two dogs past the station . "
    "Cats chase the dog . The cat sleeps on a sofa . Dogs bark at the cat while two cats watch . "
    "a robot and a bird , the robot waves . seven penguins slide on ice ."
).split()
_RARE_WORDS = "four Excavators excavators dig near a hydration-station . Robots Birds".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A T5 tokenizer over a unigram SentencePiece model trained on a tiny corpus."""
    rng = random.Random(0)
    sentences = [" ".join(rng.sample(_COMMON_WORDS, 8)) for _ in range(300)] + [" ".join(_RARE_WORDS)] * 2
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=100, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    folder = tmp_path_factory.mktemp("t5_tokenizer")
    (folder / "spiece.model").write_bytes(model.getvalue())
    return T5Tokenizer.from_pretrained(str(folder))


def _ids(tokenizer, prompt):
    return tokenizer(prompt, add_special_tokens=True).input_ids


def _decoded(tokenizer, ids, positions):
    return tokenizer.decode([ids[p] for p in positions]).strip()


def _pieces(tokenizer, ids, positions):
    return tokenizer.convert_ids_to_tokens([ids[p] for p in positions])


def test_sub_word_noun_maps_to_all_its_pieces(tokenizer):
    prompt = "four excavators dig near the station."
    ids = _ids(tokenizer, prompt)
    positions = map_noun_tokens(tokenizer, ids, ["excavators"])["excavators"]
    assert len(positions) >= 2, f"the test tokenizer should split it: {_pieces(tokenizer, ids, positions)}"
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert _decoded(tokenizer, ids, positions) == "excavators"


def test_sentence_initial_capitalised_noun(tokenizer):
    prompt = "Excavators dig near two cats."
    ids = _ids(tokenizer, prompt)
    assert tokenizer.convert_ids_to_tokens(ids[:1]) == ["\u2581"], "the test needs a split-off space marker"
    positions = map_noun_tokens(tokenizer, ids, ["excavators"])["excavators"]
    assert positions[0] == 1 and len(positions) >= 2
    assert _decoded(tokenizer, ids, positions) == "Excavators"


def test_repeated_word_first_occurrence_or_the_counted_one(tokenizer):
    prompt = "the cats watch as two cats play"
    ids = _ids(tokenizer, prompt)
    first = map_noun_tokens(tokenizer, ids, ["cats"])["cats"]
    counted = map_noun_tokens(tokenizer, ids, [CountedNoun("cats", 2, 22, 26, 1, 18)])["cats"]
    assert _decoded(tokenizer, ids, first) == _decoded(tokenizer, ids, counted) == "cats"
    assert counted[0] > first[-1]
    assert tokenizer.decode(ids[first[-1] + 1:counted[0]]).split() == ["watch", "as", "two"]


def test_several_nouns_and_a_hyphenated_compound(tokenizer):
    prompt = "A robot, two dogs and one hydration-station in the park."
    ids = _ids(tokenizer, prompt)
    mapped = map_noun_tokens(tokenizer, ids, ["robot", "dogs", "station"])
    assert list(mapped) == ["robot", "dogs", "station"]
    for noun, positions in mapped.items():
        assert _decoded(tokenizer, ids, positions).endswith(noun)
        assert noun in _decoded(tokenizer, ids, positions)
    assert max(mapped["robot"]) < min(mapped["dogs"]) <= max(mapped["dogs"]) < min(mapped["station"])


def test_a_noun_given_twice_gets_both_occurrences(tokenizer):
    prompt = "two cats and three cats"
    ids = _ids(tokenizer, prompt)
    twice = [CountedNoun("cats", 2, 4, 8, 0, 0), CountedNoun("cats", 3, 19, 23, 1, 13)]
    positions = map_noun_tokens(tokenizer, ids, twice)["cats"]
    once = map_noun_tokens(tokenizer, ids, twice[:1])["cats"]
    assert len(positions) == 2 * len(once)
    assert _decoded(tokenizer, ids, positions).split() == ["cats", "cats"]


def test_random_prompts_map_back_to_their_nouns(tokenizer):
    rng = random.Random(29)
    words = sorted({w for w in _COMMON_WORDS + _RARE_WORDS if w.isalpha()})
    for _ in range(30):
        prompt_words = rng.sample(words, rng.randint(3, 9))
        noun = rng.choice(prompt_words)
        ids = _ids(tokenizer, " ".join(prompt_words))
        positions = map_noun_tokens(tokenizer, ids, [noun])[noun]
        first = next(i for i, w in enumerate(prompt_words) if w.lower() == noun.lower())
        assert _decoded(tokenizer, ids, positions).lower() == noun.lower()
        before = tokenizer.decode(ids[:positions[0]]).split()
        assert [w.lower() for w in before] == [w.lower() for w in prompt_words[:first]]


def test_a_noun_not_in_the_prompt_is_named(tokenizer):
    ids = _ids(tokenizer, "two cats play in the park")
    with pytest.raises(UserInputError, match="'cat' is not a word of the prompt"):
        map_noun_tokens(tokenizer, ids, ["cat"])
    with pytest.raises(UserInputError, match="'cats' occurs 1 time"):
        map_noun_tokens(tokenizer, ids, [CountedNoun("cats", 2, 4, 8, 1, 0)])
    with pytest.raises(UserInputError, match="non-empty string"):
        map_noun_tokens(tokenizer, ids, [" "])


def test_special_tokens_are_never_mapped(tokenizer):
    ids = _ids(tokenizer, "robots") + [tokenizer.pad_token_id] * 3
    positions = map_noun_tokens(tokenizer, ids, ["robots"])["robots"]
    special = set(tokenizer.all_special_ids)
    assert positions and all(ids[p] not in special for p in positions)


@requires_full_stack("spacy")
def test_with_the_prompt_parser(tokenizer):
    from numina_engine.numina.prompt_counts import parse_counted_nouns

    prompt = "The dogs bark while two dogs and a robot watch them."
    counted = parse_counted_nouns(prompt)
    assert [(c.noun, c.count, c.occurrence) for c in counted] == [("dogs", 2, 1), ("robot", 1, 0)]
    ids = _ids(tokenizer, prompt)
    mapped = map_noun_tokens(tokenizer, ids, counted)
    assert tokenizer.decode(ids[:mapped["dogs"][0]]).split() == ["The", "dogs", "bark", "while", "two"]
    assert _decoded(tokenizer, ids, mapped["robot"]) == "robot"


def authors_rule_oracle(tokenizer, ids, noun):
    """The authors' published token-mapping steps, written out plainly: the ids of " " + noun, then of
    noun, as the first contiguous run in ids; else the lower-cased noun as a substring of the
    per-token decoded text (then " " + noun), mapped to the tokens under it."""
    for text in (" " + noun, noun):
        needle = tokenizer.encode(text, add_special_tokens=False)
        for start in range(len(ids) - len(needle) + 1):
            if needle and ids[start:start + len(needle)] == needle:
                return list(range(start, start + len(needle)))
    spans, offset = [], 0
    for position, token_id in enumerate(ids):
        piece = tokenizer.decode([token_id])
        spans.append((offset, offset + len(piece), position))
        offset += len(piece)
    text = "".join(tokenizer.decode([token_id]) for token_id in ids).lower()
    at = text.find(noun.lower())
    if at < 0 and text.find(" " + noun.lower()) >= 0:
        at = text.find(" " + noun.lower()) + 1
    if at < 0:
        return None
    return sorted({p for lo, hi, p in spans if lo < at + len(noun) and hi > at})


@pytest.mark.parametrize("prompt, noun", [
    ("Excavators dig near two cats.", "excavators"),          # capitalised, sentence-initial, sub-word pieces
    ("Cats chase the dog.", "cats"),                           # capitalised whole piece
    ("the cats watch as two cats play", "cats"),               # repeated: the first occurrence
    ("two cats and three dogs play", "cat"),                   # sub-word: "cat" inside "cats"
    ("four excavators dig near the station.", "excavators"),
    ("A robot, two dogs and one hydration-station in the park.", "station"),
    ("The cat sleeps on a sofa", "Cat"),                       # the noun capitalised, the prompt not
])
def test_authors_token_match_follows_the_authors_rule(tokenizer, prompt, noun):
    ids = _ids(tokenizer, prompt)
    expected = authors_rule_oracle(tokenizer, ids, noun)
    assert expected is not None
    assert map_noun_tokens(tokenizer, ids, [noun], match="authors") == {noun: expected}


def test_authors_and_words_rules_differ_on_sub_words_and_counted_occurrences(tokenizer):
    ids = _ids(tokenizer, "two cats and three dogs play")
    assert "cats" in _decoded(tokenizer, ids, map_noun_tokens(tokenizer, ids, ["cat"], match="authors")["cat"])
    with pytest.raises(UserInputError, match="not a word of the prompt"):
        map_noun_tokens(tokenizer, ids, ["cat"])                              # whole words only
    ids = _ids(tokenizer, "the cats watch as two cats play")
    counted = CountedNoun("cats", 2, 22, 26, 1, 18)
    authors = map_noun_tokens(tokenizer, ids, [counted], match="authors")["cats"]
    words = map_noun_tokens(tokenizer, ids, [counted])["cats"]
    assert authors[0] < words[0]                       # the authors take the first occurrence
    with pytest.raises(UserInputError, match="penguin"):
        map_noun_tokens(tokenizer, ids, ["penguin"], match="authors")
    with pytest.raises(UserInputError, match="token_match"):
        map_noun_tokens(tokenizer, ids, ["cats"], match="exact")


# Phrase scope, on the shipped demo model's tokenizer (every world noun one token, the other caption
# words often split into letters) and on the tiny Wan checkpoint's umT5-style tokenizer.
DEMO_TOKENIZER = Path(__file__).resolve().parent.parent / "numina_engine" / "assets" / "counting-world" / "tokenizer"
_WORLD_TOKENIZERS = {"demo": DEMO_TOKENIZER, "tiny-wan": TINY_WAN / "tokenizer"}
_CAPTION = "Three shiny apples and a pair of boxes drifting left."
_REPEATED = "The apples glow while two bright apples and a box are drifting left."


@pytest.fixture(scope="module", params=sorted(_WORLD_TOKENIZERS))
def world_tokenizer(request):
    return AutoTokenizer.from_pretrained(str(_WORLD_TOKENIZERS[request.param]), local_files_only=True)


def _normalised(text):
    return " ".join(text.split()).lower()


def _check_span(tokenizer, ids, positions, text):
    """The positions are one contiguous run of tokens that decodes to `text` (spaces and case
    normalised), starting on a token of its first word (not a lone space marker)."""
    assert positions == list(range(positions[0], positions[-1] + 1)), positions
    assert _normalised(_decoded(tokenizer, ids, positions)) == _normalised(text), _pieces(tokenizer, ids, positions)
    assert _pieces(tokenizer, ids, positions[:1]) != ["\u2581"]


def _counted(prompt, noun, count, occurrence, phrase_text):
    """A CountedNoun built by hand: the `occurrence`-th `noun` of the prompt, its phrase ending there."""
    start = [m.start() for m in re.finditer(rf"\b{noun}\b", prompt, flags=re.IGNORECASE)][occurrence]
    phrase_start = start + len(noun) - len(phrase_text)
    assert prompt[phrase_start:start + len(noun)] == phrase_text
    return CountedNoun(noun, count, start, start + len(noun), occurrence, phrase_start)


def test_the_demo_tokenizer_keeps_every_world_noun_one_token():
    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER), local_files_only=True)
    for kind in KINDS:
        for noun in (kind.noun, kind.plural):
            ids = tokenizer(noun, add_special_tokens=False).input_ids
            assert tokenizer.convert_ids_to_tokens(ids) == ["\u2581" + noun], noun


def test_phrase_scope_maps_the_count_phrase_by_hand(world_tokenizer):
    """CountedNouns built by hand (runs without spaCy)."""
    ids = _ids(world_tokenizer, _CAPTION)
    counted = [_counted(_CAPTION, "apples", 3, 0, "Three shiny apples"), _counted(_CAPTION, "boxes", 2, 0, "pair of boxes")]
    phrase = map_noun_tokens(world_tokenizer, ids, counted, scope="phrase", prompt=_CAPTION)
    noun = map_noun_tokens(world_tokenizer, ids, counted, scope="noun", prompt=_CAPTION)
    assert list(phrase) == list(noun) == ["apples", "boxes"]
    _check_span(world_tokenizer, ids, phrase["apples"], "Three shiny apples")
    _check_span(world_tokenizer, ids, phrase["boxes"], "pair of boxes")
    for word in ("apples", "boxes"):
        _check_span(world_tokenizer, ids, noun[word], word)
        assert noun[word][-1] == phrase[word][-1] and len(noun[word]) < len(phrase[word])
    assert max(phrase["apples"]) < min(phrase["boxes"])
    before = world_tokenizer.decode(ids[phrase["apples"][-1] + 1:phrase["boxes"][0]])
    assert _normalised(before) == "and a"


@requires_full_stack("spacy")
def test_phrase_scope_on_a_parsed_caption(world_tokenizer):
    from numina_engine.numina.prompt_counts import parse_counted_nouns

    counted = parse_counted_nouns(_CAPTION)
    assert [(c.noun, c.count, _CAPTION[slice(*c.phrase)]) for c in counted] == [
        ("apples", 3, "Three shiny apples"), ("boxes", 2, "pair of boxes")]
    ids = _ids(world_tokenizer, _CAPTION)
    phrase = map_noun_tokens(world_tokenizer, ids, counted, scope="phrase", prompt=_CAPTION)
    _check_span(world_tokenizer, ids, phrase["apples"], "Three shiny apples")
    _check_span(world_tokenizer, ids, phrase["boxes"], "pair of boxes")
    noun = map_noun_tokens(world_tokenizer, ids, counted)
    assert _pieces(world_tokenizer, ids, noun["apples"])[-1].endswith("apples")
    _check_span(world_tokenizer, ids, noun["apples"], "apples")
    _check_span(world_tokenizer, ids, noun["boxes"], "boxes")
    # the authors' rule finds the same noun tokens here, and the phrase scope adds the same words
    authors = map_noun_tokens(world_tokenizer, ids, counted, scope="phrase", prompt=_CAPTION, match="authors")
    assert authors == phrase


@requires_full_stack("spacy")
def test_phrase_scope_maps_the_counted_occurrence_of_a_repeated_noun(world_tokenizer):
    from numina_engine.numina.prompt_counts import parse_counted_nouns

    counted = [c for c in parse_counted_nouns(_REPEATED) if c.noun == "apples"]
    assert [(c.count, c.occurrence, _REPEATED[slice(*c.phrase)]) for c in counted] == [(2, 1, "two bright apples")]
    assert counted[0] == _counted(_REPEATED, "apples", 2, 1, "two bright apples")
    ids = _ids(world_tokenizer, _REPEATED)
    phrase = map_noun_tokens(world_tokenizer, ids, counted, scope="phrase", prompt=_REPEATED)["apples"]
    noun = map_noun_tokens(world_tokenizer, ids, counted)["apples"]
    first = map_noun_tokens(world_tokenizer, ids, ["apples"])["apples"]
    _check_span(world_tokenizer, ids, phrase, "two bright apples")
    _check_span(world_tokenizer, ids, noun, "apples")
    assert first[-1] < phrase[0] and noun[-1] == phrase[-1]
    assert _normalised(world_tokenizer.decode(ids[:phrase[0]])) == "the apples glow while"


@requires_full_stack("spacy")
def test_phrase_scope_on_world_captions(world_tokenizer):
    """Every count phrase of sampled captions, found here with a regex over the caption (a leading
    bare article is not part of it: "an apple" -> "apple", "a pair of boxes" -> "pair of boxes")."""
    from numina_engine.numina.prompt_counts import parse_counted_nouns

    counts = (r"(?:a |an )?(?P<phrase>(?:(?:single|pair of|" + "|".join(NUMBER_WORDS) + r") )?"
              r"(?:(?:" + "|".join(ATTRIBUTES) + r") )?)")
    scenes = sample_scenes(40, seed=3)
    for prompt, target in zip(captions(scenes, 3), scene_counts(scenes)):
        counted = parse_counted_nouns(prompt)
        assert {c.noun.lower(): c.count for c in counted} == target, prompt
        ids = _ids(world_tokenizer, prompt)
        mapped = map_noun_tokens(world_tokenizer, ids, counted, scope="phrase", prompt=prompt)
        for noun in target:
            found = re.search(rf"\b{counts}{noun}\b", prompt, flags=re.IGNORECASE)
            _check_span(world_tokenizer, ids, mapped[noun], found.group("phrase") + noun)


def test_phrase_scope_inputs(world_tokenizer):
    ids = _ids(world_tokenizer, _CAPTION)
    counted = [_counted(_CAPTION, "apples", 3, 0, "Three shiny apples")]
    with pytest.raises(ValueError, match="needs the parsed prompt"):
        map_noun_tokens(world_tokenizer, ids, counted, scope="phrase")
    with pytest.raises(UserInputError, match="token scope"):
        map_noun_tokens(world_tokenizer, ids, counted, scope="sentence", prompt=_CAPTION)
    # a plain noun has no phrase: the phrase scope maps only its tokens
    assert map_noun_tokens(world_tokenizer, ids, ["apples"], scope="phrase", prompt=_CAPTION) == \
        map_noun_tokens(world_tokenizer, ids, ["apples"])
    # a phrase that is not the encoded prompt's is named
    other = "Three shiny apples and two boxes."
    with pytest.raises(UserInputError, match="count phrase 'pair of boxes'"):
        map_noun_tokens(world_tokenizer, _ids(world_tokenizer, other),
                        [_counted(_CAPTION, "boxes", 2, 0, "pair of boxes")], scope="phrase", prompt=_CAPTION)
