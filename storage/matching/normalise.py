"""Names as matching sees them: folded, abbreviations expanded, type words set apart.

``"Centre de Santé St-Joseph"`` → core ``"saint joseph"``, types ``{"CSANTE"}``;
``"St. Joseph CS"`` → the same.  The lists live in ``typewords/<lang>.toml`` (one
per language, editable) plus whatever a ``--config`` file adds.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rapidfuzz.distance import OSA

from storage.errors import InvalidInput
from storage.matching.config import MatchConfig

TYPEWORDS_DIR = Path(__file__).parent / "typewords"
MAX_PHRASE = 6

_DOTTED = re.compile(r"(?<![^\W\d_])([^\W\d_])\.")  # "C.S." → "CS"
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_LETTER_DIGIT = re.compile(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])")


@dataclass(frozen=True)
class NormalName:
    full: str  # folded, abbreviations expanded, type words kept
    core: str  # type words and stop words taken out (or ``full`` if nothing is left)
    types: frozenset[str]


def fold(text: str) -> str:
    """Lower case, no accents, punctuation → spaces, letters and digits apart."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.replace("'", "").replace("\u2019", "")
    text = _DOTTED.sub(r"\1", text).lower()
    text = _NON_ALNUM.sub(" ", text)
    text = _LETTER_DIGIT.sub(" ", text)
    return _join_initials(text.split())


def _join_initials(tokens: list[str]) -> str:
    """Runs of single letters are one abbreviation: "c s" (from "C/S") → "cs"."""
    out: list[str] = []
    run = ""
    for t in tokens:
        if len(t) == 1 and t.isalpha():
            run += t
            continue
        if run:
            out.append(run)
            run = ""
        out.append(t)
    if run:
        out.append(run)
    return " ".join(out)


def _codes(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value.upper(),)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(v.upper() for v in value)
    raise InvalidInput(f"{where}: a type word maps to a code or a list of codes, not {value!r}.")


def read_language(lang: str) -> dict[str, Any]:
    path = TYPEWORDS_DIR / f"{lang}.toml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in TYPEWORDS_DIR.glob("*.toml")))
        raise InvalidInput(f"No type-word list for language {lang!r} (have: {have}).")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput(f"{path} is not valid TOML: {error}") from error


class Normaliser:
    """Built once per run from the language lists and the config; caches per name."""

    def __init__(self, config: MatchConfig | None = None) -> None:
        config = config or MatchConfig()
        self.types: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.abbrev: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.stop: set[str] = set()
        layers = [(read_language(lang), f"typewords/{lang}.toml") for lang in config.languages]
        layers.append(({"type_words": config.type_words, "abbreviations": config.abbreviations,
                        "stopwords": config.stopwords}, "config"))
        for data, where in layers:
            for phrase, codes in (data.get("type_words") or {}).items():
                self.types[tuple(fold(phrase).split())] = _codes(codes, f"{where}: {phrase!r}")
            for phrase, expansion in (data.get("abbreviations") or {}).items():
                self.abbrev[tuple(fold(phrase).split())] = tuple(fold(str(expansion)).split())
            self.stop.update(fold(w) for w in data.get("stopwords") or [])
        self.types.pop((), None)
        self.abbrev.pop((), None)
        # words of type phrases, to recognise them misspelt by one letter ("matrenelle")
        self.type_vocab = sorted({w for phrase in self.types for w in phrase if len(w) >= 5})
        # words the lists spell out are real words, never respelt ("sainte" is not "sante")
        self.known = {w for phrase in [*self.types, *self.abbrev, *self.abbrev.values()]
                      for w in phrase} | self.stop
        self.normalise = lru_cache(maxsize=None)(self._normalise)  # type: ignore[method-assign]
        # the same words recur in thousands of names ("ecole", place names): respell each once
        self._respell = lru_cache(maxsize=None)(self._respell)  # type: ignore[method-assign]

    @staticmethod
    def _longest(tokens: list[str], i: int, table: dict[tuple[str, ...], Any]) -> int:
        for n in range(min(MAX_PHRASE, len(tokens) - i), 0, -1):
            if tuple(tokens[i:i + n]) in table:
                return n
        return 0

    def _respell(self, token: str) -> str:
        if len(token) < 5 or token in self.known or token.isdigit():
            return token
        for word in self.type_vocab:
            if abs(len(word) - len(token)) <= 1 and OSA.distance(token, word, score_cutoff=1) <= 1:
                return word
        return token

    def _normalise(self, name: str) -> NormalName:
        tokens = [self._respell(t) for t in fold(name or "").split()]
        expanded: list[str] = []
        i = 0
        while i < len(tokens):
            n = self._longest(tokens, i, self.abbrev)
            if n:
                expanded.extend(self.abbrev[tuple(tokens[i:i + n])])
                i += n
            else:
                expanded.append(tokens[i])
                i += 1
        core: list[str] = []
        types: set[str] = set()
        i = 0
        while i < len(expanded):
            n = self._longest(expanded, i, self.types)
            if n:
                types.update(self.types[tuple(expanded[i:i + n])])
                i += n
                continue
            if expanded[i] not in self.stop:
                core.append(expanded[i])
            i += 1
        full = " ".join(expanded)
        return NormalName(full, " ".join(core) or full, frozenset(types))
