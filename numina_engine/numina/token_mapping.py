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
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import UserInputError
from .prompt_counts import CountedNoun, parse_counts, whole_word_matches

_SPACE_MARKER = "\u2581"   # SentencePiece's "▁"
_PLACEHOLDER = "\ufffd"    # stands for a token whose text is unknown (<unk>, a byte piece)
TOKEN_SCOPES = ("noun", "phrase")


def map_noun_tokens(tokenizer, prompt_ids: Sequence[int], nouns: Sequence[str | CountedNoun],
                    scope: str = "noun", prompt: str | None = None) -> dict[str, list[int]]:
    """Positions in `prompt_ids` of each noun's tokens.

    tokenizer: a Hugging Face T5/umT5 tokenizer (SentencePiece pieces, `convert_ids_to_tokens`).
    prompt_ids: the ids the text encoder sees for the cleaned prompt, special tokens included,
        padding excluded (list of int).
    nouns: noun strings (first occurrence) or `CountedNoun`s (the counted occurrence).
    scope: "noun" (the noun's tokens) or "phrase" (its count phrase's tokens; needs `prompt`, the
        text the `CountedNoun`s were parsed from, to read the phrase's words).
    Returns {noun: sorted token positions (0-based indices into prompt_ids)}; a noun given
    several times (counted in several places) gets the union of its positions.
    Raises UserInputError naming a noun that is not in the prompt, with the prompt's nouns.
    """
    if scope not in TOKEN_SCOPES:
        raise UserInputError(f"token scope must be one of {list(TOKEN_SCOPES)}, got {scope!r}")
    if scope == "phrase" and prompt is None:
        raise ValueError("scope 'phrase' needs the parsed prompt text")
    ids = [int(i) for i in prompt_ids]
    text, owners = _decoded_text(tokenizer, ids)
    positions: dict[str, list[int]] = {}
    for item in nouns:
        noun, occurrence = (item.noun, item.occurrence) if isinstance(item, CountedNoun) else (item, 0)
        if not isinstance(noun, str) or not noun.strip():
            raise UserInputError(f"a noun must be a non-empty string, got {noun!r}")
        matches = whole_word_matches(text, noun)
        if occurrence >= len(matches):
            raise UserInputError(_not_found_message(noun, occurrence, len(matches), text))
        match = matches[occurrence]
        start = match.start()
        if scope == "phrase" and isinstance(item, CountedNoun):
            start = _phrase_start(text, match, prompt[slice(*item.phrase)])
        found = sorted({owners[k] for k in range(start, match.end())})
        positions[noun] = sorted(set(positions.get(noun, [])) | set(found))
    return positions


def _phrase_start(text: str, noun_match: re.Match, phrase: str) -> int:
    """Where `phrase` (words ending with the noun) starts in the decoded `text`, ending at the noun's
    match; spacing may differ from the prompt's, case is ignored."""
    words = phrase.split()
    pattern = r"(?<![^\W_])" + r"\s*".join(re.escape(w) for w in words) + r"$"
    found = re.search(pattern, text[:noun_match.end()], flags=re.IGNORECASE)
    if found is None:
        raise UserInputError(f"the count phrase {phrase!r} is not in the encoded prompt {' '.join(text.split())!r}")
    return found.start()


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
