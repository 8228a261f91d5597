"""Token positions of counted nouns in the text encoder's input ids.

Wan2.1 encodes prompts with the umT5 SentencePiece tokenizer, so one noun may span several
sub-word tokens ("excavators" -> "▁ex", "cav", "ators"), and a word's first token carries the
"▁" space marker except where SentencePiece split it off ("▁", "Cat", "s"). NUMINA reads the
cross-attention of all the tokens of a noun.

The ids are turned back into text piece by piece, so every character knows the token it came
from; a noun is then found as a whole word, ignoring case ("Cats" at the start of a sentence
matches "cats"), and maps to every token that overlaps it. A lone "▁" token before the word
is not part of it. Which occurrence of a repeated word is the counted one:
- a plain `str` noun: its first occurrence (the NUMINA authors' rule);
- a `CountedNoun` from `parse_counted_nouns`: the occurrence the parser counted ("a dog
  watching the cats as two cats play" maps "cats" to its second occurrence, where "two" is).
The prompt parsed must be the one encoded (after the same cleaning).

Scope: "noun" maps the noun's own tokens (the authors' rule); "phrase" maps its whole count phrase
as the parser found it ("three shiny apples": the count word, modifiers and compounds, then the
noun; `CountedNoun.phrase`). A plain `str` noun has no phrase: "phrase" maps only its tokens.

That is the "words" rule (NuminaConfig.token_match="words"). The "authors" rule reproduces the
authors' token mapper (H-EmbodVis/NUMINA, numina/token_mapper.py), first hit wins:
  1. the ids of `" " + noun` (encoded without special tokens) as a contiguous subsequence of the
     prompt's ids, case-sensitive, first occurrence;
  2. the same with the ids of `noun`;
  3. each id decoded on its own, concatenated, and the lower-cased noun searched in the lower-cased
     text as a plain substring (no word boundaries: "cat" matches inside "cats" or "concatenate";
     then " " + noun); the tokens covering the match.
It always takes the first occurrence (a CountedNoun's occurrence is not used).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import UserInputError

from .prompt_counts import CountedNoun, parse_counts, whole_word_matches

TOKEN_MATCH_RULES = ("authors", "words")

_SPACE_MARKER = "\u2581"   # SentencePiece's "▁"
_PLACEHOLDER = "\ufffd"    # stands for a token whose text is unknown (<unk>, a byte piece)
TOKEN_SCOPES = ("noun", "phrase")


def map_noun_tokens(tokenizer, prompt_ids: Sequence[int], nouns: Sequence[str | CountedNoun],
                    scope: str = "noun", prompt: str | None = None, match: str = "words") -> dict[str, list[int]]:
    """Positions in `prompt_ids` of each noun's tokens.

    tokenizer: a Hugging Face T5/umT5 tokenizer (SentencePiece pieces, `convert_ids_to_tokens`).
    prompt_ids: the ids the text encoder sees for the cleaned prompt, special tokens included,
        padding excluded (list of int).
    nouns: noun strings (first occurrence) or `CountedNoun`s (the counted occurrence).
    scope: "noun" (the noun's tokens) or "phrase" (its count phrase's tokens; needs `prompt`, the
        text the `CountedNoun`s were parsed from, to read the phrase's words).
    match: "words" (whole words, any case) or "authors" (the authors' rule; see the module doc).
    Returns {noun: sorted token positions (0-based indices into prompt_ids)}; a noun given
    several times (counted in several places) gets the union of its positions.
    Raises UserInputError naming a noun that is not in the prompt, with the prompt's nouns.
    """
    if scope not in TOKEN_SCOPES:
        raise UserInputError(f"token scope must be one of {list(TOKEN_SCOPES)}, got {scope!r}")
    if scope == "phrase" and prompt is None:
        raise ValueError("scope 'phrase' needs the parsed prompt text")
    if match not in TOKEN_MATCH_RULES:
        raise UserInputError(f"token_match must be one of {list(TOKEN_MATCH_RULES)}, got {match!r}")
    ids = [int(i) for i in prompt_ids]
    text, owners = _decoded_text(tokenizer, ids)
    positions: dict[str, list[int]] = {}
    for item in nouns:
        noun, occurrence = (item.noun, item.occurrence) if isinstance(item, CountedNoun) else (item, 0)
        if not isinstance(noun, str) or not noun.strip():
            raise UserInputError(f"a noun must be a non-empty string, got {noun!r}")
        phrase = scope == "phrase" and isinstance(item, CountedNoun)
        if match == "authors":
            found = authors_noun_positions(tokenizer, ids, noun)
            if found is None:
                raise UserInputError(_not_found_message(noun, 0, 0, text))
            if phrase:     # the phrase's other words as the "words" rule finds them
                found = sorted(set(found) | set(_word_positions(text, owners, item, prompt, phrase)))
        else:
            found = _word_positions(text, owners, item, prompt, phrase)
        positions[noun] = sorted(set(positions.get(noun, [])) | set(found))
    return positions


def _word_positions(text: str, owners: list[int], item: str | CountedNoun, prompt: str | None,
                    phrase: bool) -> list[int]:
    """The "words" rule: positions of the tokens overlapping the noun's counted occurrence as a
    whole word (with `phrase`, from the start of its count phrase)."""
    noun, occurrence = (item.noun, item.occurrence) if isinstance(item, CountedNoun) else (item, 0)
    matches = whole_word_matches(text, noun)
    if occurrence >= len(matches):
        raise UserInputError(_not_found_message(noun, occurrence, len(matches), text))
    found = matches[occurrence]
    start = _phrase_start(text, found, prompt[slice(*item.phrase)]) if phrase else found.start()
    return sorted({owners[k] for k in range(start, found.end())})


def _phrase_start(text: str, noun_match: re.Match, phrase: str) -> int:
    """Where `phrase` (words ending with the noun) starts in the decoded `text`, ending at the noun's
    match; spacing may differ from the prompt's, case is ignored."""
    words = phrase.split()
    pattern = r"(?<![^\W_])" + r"\s*".join(re.escape(w) for w in words) + r"$"
    found = re.search(pattern, text[:noun_match.end()], flags=re.IGNORECASE)
    if found is None:
        raise UserInputError(f"the count phrase {phrase!r} is not in the encoded prompt {' '.join(text.split())!r}")
    return found.start()


def authors_noun_positions(tokenizer, ids: list[int], noun: str) -> list[int] | None:
    """The authors' rule (module doc): token positions of `noun` in `ids`, or None when not found."""
    for text in (" " + noun, noun):
        needle = list(tokenizer.encode(text, add_special_tokens=False))
        start = _first_subsequence(ids, needle)
        if start is not None:
            return list(range(start, start + len(needle)))
    pieces = [tokenizer.decode([token_id]) for token_id in ids]
    owners = [position for position, piece in enumerate(pieces) for _ in piece]
    text = "".join(pieces).lower()
    start = text.find(noun.lower())
    if start == -1:
        start = text.find(" " + noun.lower())
        start = start + 1 if start != -1 else -1
    if start == -1:
        return None
    covered = sorted({owners[k] for k in range(start, min(start + len(noun), len(owners)))})
    return covered or None


def _first_subsequence(haystack: list[int], needle: list[int]) -> int | None:
    """Start of the first contiguous occurrence of `needle` in `haystack` (None: none, or empty)."""
    if not needle or len(needle) > len(haystack):
        return None
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return None


def _decoded_text(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """The text the ids spell, and for each of its characters the position of its token.

    Special tokens (</s>, <pad>, sentinels) add no text; <unk> and byte pieces add one
    placeholder character each, so that they never join the words around them.
    """
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    pieces = tokenizer.convert_ids_to_tokens(ids)
    chars: list[str] = []
    owners: list[int] = []
    for position, (token_id, piece) in enumerate(zip(ids, pieces)):
        if token_id in special:
            continue
        if token_id == tokenizer.unk_token_id or _is_byte_piece(piece):
            piece_text = _PLACEHOLDER
        else:
            piece_text = piece.replace(_SPACE_MARKER, " ")
        chars.append(piece_text)
        owners.extend([position] * len(piece_text))
    return "".join(chars), owners


def _is_byte_piece(piece: str) -> bool:
    """SentencePiece's byte-fallback pieces look like "<0xE2>"."""
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _not_found_message(noun: str, occurrence: int, available: int, text: str) -> str:
    prompt = " ".join(text.split())
    where = f"the prompt {prompt!r} {_prompt_nouns(prompt)}"
    if available == 0:
        return f"noun {noun!r} is not a word of the prompt; {where}. Give nouns as written there."
    return (f"noun {noun!r} occurs {available} time(s) in the prompt, so its occurrence "
            f"{occurrence} does not exist; {where}")


def _prompt_nouns(prompt: str) -> str:
    """What the prompt counts, for an error message (its words when spaCy is not installed)."""
    try:
        counts = parse_counts(prompt)
    except ImportError:
        return f"has the words {prompt.split()}"
    return f"counts the nouns {sorted(counts)}"
