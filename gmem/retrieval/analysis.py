"""Text analysis shared by every BM25 field: Elasticsearch's built-in `english` analyzer, in Python.

ES's `english` analyzer is: standard tokenizer -> english_possessive_stemmer -> lowercase ->
english_stop -> (keyword_marker, empty by default) -> stemmer `english`, which Lucene implements
with PorterStemFilter (the original Porter algorithm, not Porter2/Snowball-English). `analyze`
reproduces that chain:

1. Tokens: maximal runs of Unicode word characters (letters, digits, marks, underscore); an
   apostrophe or a period between two word characters stays inside the token ("O'Neil",
   "U.S", "3.14"), as do a comma or semicolon between two digits ("1,000"). Everything else
   separates tokens; single characters and numbers are tokens.
2. Possessives: a trailing 's ('s, U+2019 's or U+FF07 's, either case) is removed.
3. Lowercase.
4. Stop words: Lucene's 33-word English set (`STOP_WORDS`, ES's `_english_`).
5. Porter stemming with PyStemmer's "porter" algorithm (Snowball's encoding of Porter 1980).

What matches ES exactly: lowercase, the stop set, possessives, and the stem of nearly every
word. What does not:
- The tokenizer approximates UAX#29 word boundaries (which Lucene's StandardTokenizer follows):
  CJK ideographs, Thai and emoji segment differently (UAX#29 emits one token per ideograph,
  here a run is one token); tokens over 255 characters are not split; URLs/e-mail addresses
  split the same way in both (the standard tokenizer does not keep them whole either).
- Lucene's PorterStemmer follows Porter's reference code, which adds two Step-2 rules to the
  1980 paper that Snowball encodes: "bli" -> "ble" (instead of "abli" -> "able") and
  "logi" -> "log". So "humbly" is "humbl" in ES but "humbli" here, "archaeology" is
  "archaeolog" in ES but "archaeologi" here. Both sides of a search use the same stemmer here,
  so only cross-engine comparisons see it.
"""

from __future__ import annotations

import re
from typing import Iterable

import Stemmer

# Lucene EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (== ES `_english_`).
STOP_WORDS = frozenset("""
a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with
""".split())

# A word run, continued across [.'’] between word characters or [,;] between digits (UAX#29
# MidNumLet / MidNum rules, simplified).
_TOKEN = re.compile(r"\w+(?:(?:[.'’](?=\w)|(?<=\d)[,;](?=\d))\w+)*")
_POSSESSIVE = re.compile(r"['’＇][sS]$")

_stemmer = None


def _stem_words(words: list[str]) -> list[str]:
    global _stemmer
    if _stemmer is None:  # PyStemmer is a C extension: created once, on first use
        _stemmer = Stemmer.Stemmer("porter")
    return _stemmer.stemWords(words)


def tokenize(text: str) -> list[str]:
    """Step 1 only: the raw tokens of `text`, in order, original case."""
    return _TOKEN.findall(text)


def analyze(text: str) -> list[str]:
    """Terms of `text` as ES's english analyzer indexes them (see the module docstring).

    Repeated terms are kept (term frequency counts them), in text order.
    """
    words = []
    for tok in _TOKEN.findall(text):
        tok = _POSSESSIVE.sub("", tok).lower()
        if tok and tok not in STOP_WORDS:
            words.append(tok)
    return _stem_words(words) if words else []


def analyze_many(texts: Iterable[str]) -> list[list[str]]:
    """analyze() over many texts (the index build's inner loop)."""
    return [analyze(t) for t in texts]
