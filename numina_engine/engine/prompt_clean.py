"""Wan's prompt cleaning, applied to every prompt before tokenisation.

The same steps as Wan2.1's tokenizer (`clean='whitespace'`) and diffusers' WanPipeline `prompt_clean`:
ftfy's `fix_text`, HTML entities unescaped twice, runs of whitespace collapsed to one space, ends stripped.
"""
from __future__ import annotations

import html
import warnings

import regex

try:
    import ftfy
except ImportError:   # ftfy is a small pure-Python package; some GPU images lack it
    ftfy = None

_WHITESPACE_RUN = regex.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Return `text` cleaned exactly as Wan2.1 and diffusers clean a prompt.

    Without ftfy installed the `fix_text` step is skipped (what diffusers does too) and a warning says
    so: only prompts with mojibake, curly quotes, ligatures or full-width characters are affected.
    """
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a str, got {type(text).__name__}")
    if ftfy is not None:
        text = ftfy.fix_text(text)
    else:
        warnings.warn("ftfy is not installed: prompts are cleaned without ftfy.fix_text, so prompts with "
                      "mojibake or curly quotes may tokenise differently from Wan2.1. `pip install ftfy` "
                      "to match it exactly.", RuntimeWarning, stacklevel=2)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip()
