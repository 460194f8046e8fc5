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
# "Prim." : a word cut short on purpose (not "ESP.RO.DI", an acronym)
_DOTTED_WORD = re.compile(r"(?<![^\W\d_])([^\W\d_]{2,})\.(?![^\W\d_])")
_VOWELS = frozenset("aeiou")
# an abbreviation found by the rules below must be at least this long on its own ("Prim",
# "Comm"), or this long when a full stop marks it as cut short ("Ec."); inside a type
# phrase whose other words agree ("Ec Mat", "C. Scol.", "Comm Hlth Post") any length will do
MIN_ABBREVIATION = 4
MIN_DOTTED_ABBREVIATION = 2


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
        self.longest_type = min(MAX_PHRASE, max(map(len, self.types), default=0))
        self.longest_abbrev = min(MAX_PHRASE, max(map(len, self.abbrev), default=0))
        # words of type phrases, to recognise them misspelt by one letter ("matrenelle")
        self.type_vocab = sorted({w for phrase in self.types for w in phrase if len(w) >= 5})
        # words the lists spell out are real words, never respelt ("sainte" is not "sante")
        self.known = {w for phrase in [*self.types, *self.abbrev, *self.abbrev.values()]
                      for w in phrase} | self.stop
        # words an unlisted abbreviation may stand for ("Comm" → community, "Hlth" → health)
        # (the written-out words: "govt" is itself short for "government")
        spelt = {w for phrase in [*self.types, *self.abbrev.values()] for w in phrase}
        self.long_words: dict[str, list[str]] = {}  # by first letter
        for w in sorted(spelt - self.stop):
            if len(w) >= 4 and w.isalpha() and (w,) not in self.abbrev:
                self.long_words.setdefault(w[0], []).append(w)
        # type phrases of several words by (length, first letter): an abbreviation keeps
        # the first letter of its word
        self.phrases_by: dict[tuple[int, str], list[tuple[str, ...]]] = {}
        for phrase in self.types:
            if len(phrase) >= 2:
                self.phrases_by.setdefault((len(phrase), phrase[0][0]), []).append(phrase)
        self.max_phrase = max((n for n, _ in self.phrases_by), default=0)
        self._expand_word = lru_cache(maxsize=None)(self._expand_word)  # type: ignore[method-assign]
        self.normalise = lru_cache(maxsize=None)(self._normalise)  # type: ignore[method-assign]
        # the same words recur in thousands of names ("ecole", place names): respell each once
        self._respell = lru_cache(maxsize=None)(self._respell)  # type: ignore[method-assign]

    @staticmethod
    def _longest(tokens: list[str], i: int, table: dict[tuple[str, ...], Any],
                 longest: int = MAX_PHRASE) -> int:
        for n in range(min(longest, len(tokens) - i), 0, -1):
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

    @staticmethod
    def _abbreviates(token: str, word: str) -> bool:
        """Could ``token`` be ``word`` cut short?  A prefix ("prim" of "primaire"), or a
        contraction: its first letters, then consonants only, ending on the word's last
        letter ("hlth" of "health", "hospl" of "hospital", "gvt" of "government").
        People drop vowels, not consonants, and keep the last letter, so a token with
        vowels that is not a prefix ("sat", "inter") is a word of its own."""
        if len(token) >= len(word) or not token.isalpha() or token[0] != word[0]:
            return False
        if word.startswith(token):
            return True
        if token[-1] != word[-1]:
            return False
        head = 1
        while head < len(token) and token[head] == word[head]:
            head += 1
        tail = token[head:]
        if len(token) < 3 or (head > 1 and head < 3) or _VOWELS.intersection(tail):
            return False
        it = iter(word[head:])
        return all(ch in it for ch in tail)  # a subsequence of the rest of the word

    def _same_reading(self, words: list[str]) -> bool:
        """Do these list words mean the same ("centre"/"center", "clinic"/"clinique")?"""
        readings = {self.abbrev.get((w,), (w,)) for w in words}
        if len(readings) == 1:
            return True
        codes = {self.types.get((w,)) for w in words}
        return len(codes) == 1 and None not in codes

    def _expand_word(self, token: str, dotted: bool) -> str:
        """An unlisted abbreviation of one list word, when it can be only that word."""
        if (token in self.known or not token.isalpha()
                or len(token) < (MIN_DOTTED_ABBREVIATION if dotted else MIN_ABBREVIATION)):
            return token
        words = [w for w in self.long_words.get(token[0], ()) if self._abbreviates(token, w)]
        if len(words) > 1 and not self._same_reading(words):
            # "prim": "primaire" is a type word on its own, "primary" only in
            # "primary school" — a lone abbreviation stands for a word that stands alone
            words = [w for w in words if (w,) in self.types]
            if len(words) > 1 and not self._same_reading(words):
                return token
        return words[0] if words else token

    def _abbreviated_phrase(self, tokens: list[str], i: int) -> tuple[int, tuple[str, ...]]:
        """A type phrase written with unlisted abbreviations ("ec mat", "comm hlth post",
        "c de s"): the longest run of tokens that are each a word of one phrase or an
        abbreviation of it, with every phrase that fits having the same type codes."""
        for n in range(min(self.max_phrase, len(tokens) - i), 1, -1):
            phrases = self.phrases_by.get((n, tokens[i][0]))
            if not phrases:
                continue
            run = tokens[i:i + n]
            if all(t in self.known for t in run) or not any(len(t) >= 2 for t in run):
                continue
            fits = [p for p in phrases
                    if all(t == w or (t not in self.known and self._abbreviates(t, w))
                           for t, w in zip(run, p, strict=True))]
            if fits and len({self.types[p] for p in fits}) == 1:
                return n, fits[0]
        return 0, ()

    def _normalise(self, name: str) -> NormalName:
        dotted = {fold(m) for m in _DOTTED_WORD.findall(name)} if "." in (name or "") else set()
        tokens = [self._respell(t) for t in fold(name or "").split()]
        expanded: list[str] = []
        i = 0
        while i < len(tokens):
            n = self._longest(tokens, i, self.abbrev, self.longest_abbrev)
            if n:
                expanded.extend(self.abbrev[tuple(tokens[i:i + n])])
                i += n
            else:
                expanded.append(tokens[i])
                i += 1
        # abbreviations no list has: "Ec. Mat." → "ecole maternelle", "Hlth" → "health"
        tokens, expanded, i = expanded, [], 0
        while i < len(tokens):
            n = self._longest(tokens, i, self.types, self.longest_type)
            if n:
                expanded.extend(tokens[i:i + n])
                i += n
                continue
            n, phrase = self._abbreviated_phrase(tokens, i)
            if n:
                for w in phrase:  # "gvt hospital" → "govt hospital" → "government hospital"
                    expanded.extend(self.abbrev.get((w,), (w,)))
                i += n
            else:
                expanded.append(self._expand_word(tokens[i], tokens[i] in dotted))
                i += 1
        core: list[str] = []
        types: set[str] = set()
        i = 0
        while i < len(expanded):
            n = self._longest(expanded, i, self.types, self.longest_type)
            if n:
                types.update(self.types[tuple(expanded[i:i + n])])
                i += n
                continue
            if expanded[i] not in self.stop:
                core.append(expanded[i])
            i += 1
        full = " ".join(expanded)
        return NormalName(full, " ".join(core) or full, frozenset(types))
