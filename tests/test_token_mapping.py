"""Noun -> token positions on a small SentencePiece T5 tokenizer trained here."""
from __future__ import annotations

import io
import random

import pytest
import sentencepiece as spm
from transformers import T5Tokenizer

from full_stack import requires_full_stack
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
    counted = map_noun_tokens(tokenizer, ids, [CountedNoun("cats", 2, 21, 25, 1, 21)])["cats"]
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
    twice = [CountedNoun("cats", 2, 4, 8, 0, 4), CountedNoun("cats", 3, 19, 23, 1, 19)]
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
        map_noun_tokens(tokenizer, ids, [CountedNoun("cats", 2, 4, 8, 1, 4)])
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
    counted = CountedNoun("cats", 2, 21, 25, 1)
    authors = map_noun_tokens(tokenizer, ids, [counted], match="authors")["cats"]
    words = map_noun_tokens(tokenizer, ids, [counted])["cats"]
    assert authors[0] < words[0]                       # the authors take the first occurrence
    with pytest.raises(UserInputError, match="penguin"):
        map_noun_tokens(tokenizer, ids, ["penguin"], match="authors")
    with pytest.raises(UserInputError, match="token_match"):
        map_noun_tokens(tokenizer, ids, ["cats"], match="exact")
