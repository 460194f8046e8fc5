"""Matching settings: declared once with defaults and help, overridable by a TOML file.

``georeg match … --config M.toml`` reads a file such as::

    [thresholds]
    auto = 0.95          # score at or above which a link is accepted automatically
    review = 0.10        # score at or above which a person reviews it; below: no match

    [names]
    languages = ["en", "fr"]            # storage/matching/typewords/<lang>.toml
    type_words = { "health post" = "HP", "cs" = "CSANTE" }
    abbreviations = { "govt" = "government" }
    stopwords = ["the"]

Every key is documented in :data:`SETTINGS` (and in docs/matching.md); an unknown
key is an error naming the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import InvalidInput

#: (section, key, attribute, help) — the one list of settings
SETTINGS: list[tuple[str, str, str, str]] = [
    ("thresholds", "auto", "auto_threshold",
     "Links scoring at least this are 'auto' (accepted without review)."),
    ("thresholds", "review", "review_threshold",
     "Links scoring at least this (and below 'auto') are 'review'; below: no match."),
    ("thresholds", "ambiguity", "ambiguity",
     "A link is only 'auto' if no rival candidate of either unit scores this much on its own "
     "(1.0: no such rule; rivals already lower the score)."),
    ("blocking", "min_name_similarity", "min_name_similarity",
     "Candidates under the parent's match are kept when names are at least this similar "
     "(0-1), or when they are close on the ground."),
    ("blocking", "neighbours", "neighbours",
     "How many neighbouring parents (nearest, or touching territories) also supply candidates."),
    ("blocking", "max_open_block", "max_open_block",
     "When a unit has no matched ancestor, compare it with every unit of its level only if "
     "the level has at most this many units (else: spatial candidates only)."),
    ("blocking", "depth_offset", "depth_offset",
     "Right depth = left depth + this (e.g. 1 when the right list has an extra top level)."),
    ("spatial", "point_radius_m", "point_radius_m",
     "Units with coordinates are candidates when closer than this (metres)."),
    ("spatial", "nearest", "nearest",
     "Of the units within the radius, only this many nearest are candidates by distance alone."),
    ("em", "iterations", "em_iterations", "Fellegi-Sunter EM iterations per level."),
    ("em", "prior_strength", "prior_strength",
     "Weight (in pairs) of the default m/u probabilities, so small levels stay sensible."),
    ("names", "languages", "languages", "Type-word lists to load (storage/matching/typewords)."),
    ("names", "type_words", "type_words", "Extra type words: phrase = code (or list of codes)."),
    ("names", "abbreviations", "abbreviations", "Extra abbreviations: word = expansion."),
    ("names", "stopwords", "stopwords", "Extra words ignored in names."),
]


@dataclass
class MatchConfig:
    auto_threshold: float = 0.95
    review_threshold: float = 0.10
    ambiguity: float = 1.0
    min_name_similarity: float = 0.55
    neighbours: int = 4
    max_open_block: int = 3000
    depth_offset: int = 0
    point_radius_m: float = 5000.0
    nearest: int = 8
    em_iterations: int = 40
    prior_strength: float = 40.0
    languages: list[str] = field(default_factory=lambda: ["en", "fr"])
    type_words: dict[str, Any] = field(default_factory=dict)
    abbreviations: dict[str, str] = field(default_factory=dict)
    stopwords: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, where: str = "matching settings") -> None:
        if not 0 < self.review_threshold <= self.auto_threshold <= 1:
            raise InvalidInput(
                f"{where}: thresholds must satisfy 0 < review <= auto <= 1 "
                f"(review is {self.review_threshold}, auto is {self.auto_threshold})."
            )
        if not 0 <= self.min_name_similarity <= 1:
            raise InvalidInput(f"{where}: blocking.min_name_similarity must be within 0..1.")
        if self.point_radius_m <= 0:
            raise InvalidInput(f"{where}: spatial.point_radius_m must be positive.")
        if self.neighbours < 0 or self.em_iterations < 1 or self.nearest < 1:
            raise InvalidInput(f"{where}: need blocking.neighbours >= 0, em.iterations >= 1 "
                               "and spatial.nearest >= 1.")


def _typed(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool) or default is None:
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(
            value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, list) and isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(default, dict) and isinstance(value, dict):
        return value
    raise InvalidInput(f"{where} is {value!r}; expected a {type(default).__name__}.")


def config_from_dict(data: dict[str, Any], where: str = "matching settings") -> MatchConfig:
    cfg = MatchConfig()
    known = {(s, k): a for s, k, a, _ in SETTINGS}
    for section, body in data.items():
        if not isinstance(body, dict):
            raise InvalidInput(f"{where}: '{section}' should be a [section]; "
                               f"sections: {', '.join(sorted({s for s, *_ in SETTINGS}))}.")
        for key, value in body.items():
            attr = known.get((section, key))
            if attr is None:
                keys = ", ".join(k for s, k, *_ in SETTINGS if s == section)
                raise InvalidInput(
                    f"{where}: unknown setting [{section}] {key}. "
                    + (f"Known in [{section}]: {keys}." if keys else "No such section.")
                )
            setattr(cfg, attr, _typed(value, getattr(cfg, attr), f"{where}: [{section}] {key}"))
    cfg.check(where)
    return cfg


def load_config(path: str | Path | None) -> MatchConfig:
    """Defaults, overridden by the TOML file at ``path`` when given."""
    if path is None:
        return MatchConfig()
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"Matching config {p} does not exist.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"{p} is not a valid TOML file: {error}") from error
    return config_from_dict(data, str(p))
