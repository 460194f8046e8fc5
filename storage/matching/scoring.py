"""Evidence per candidate pair and a Fellegi–Sunter model fitted by EM: score ≈ P(same place).

Each pair is compared on five features, each cut into a few levels:

* ``name``   — exact core name, then token-sort similarity ≥ 93, 85, 75, 65, 50, below;
* ``geo``    — missing; point distance ≤ 100 m, 500 m, 2 km, 5 km, more; territory
  overlap (IoU) ≥ 0.6, 0.3, > 0.02, none; centroid distance relative to the level's
  spacing (for areas known only by their children's points);
* ``parent`` — the parents are matched to each other / neighbours / neither / the left
  parent has no match;
* ``type``   — type words agree / unknown / disagree ("CHP" vs "Hospital");
* ``code``   — equal / missing / different.

The model has, per feature level, m = P(level | same place) and u = P(level |
different places) and a prior p; EM estimates them on the level's candidate pairs
(conditional independence, as Fellegi and Sunter), with a Dirichlet prior of
``prior_strength`` pairs on sensible defaults so that a level with 13 districts
stays well behaved.  The posterior P(same | levels) is the score.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from rapidfuzz import fuzz, process
from scipy.spatial import cKDTree

from storage.matching.blocking import Candidates, Neighbourhood
from storage.matching.geo import haversine_m, project
from storage.matching.side import Side

FEATURES = ("name", "geo", "parent", "type", "code")
NAME_CUTS = (93.0, 85.0, 75.0, 65.0, 50.0)
NAME_LEVELS = ("exact", ">=93", ">=85", ">=75", ">=65", ">=50", "<50")
POINT_CUTS = (100.0, 500.0, 2000.0, 5000.0)
IOU_CUTS = (0.6, 0.3, 0.02)
CENTROID_CUTS = (0.15, 0.4, 1.0)
GEO_LEVELS = ("missing", "<=100m", "<=500m", "<=2km", "<=5km", ">5km",
              "iou>=0.6", "iou>=0.3", "iou>0.02", "no overlap",
              "centroid<=0.15", "centroid<=0.4", "centroid<=1", "centroid>1")
PARENT_LEVELS = ("other", "neighbour", "same", "unmatched")
AGREE_LEVELS = ("disagree", "unknown", "agree")
LEVEL_NAMES = (NAME_LEVELS, GEO_LEVELS, PARENT_LEVELS, AGREE_LEVELS, AGREE_LEVELS)
SIZES = tuple(len(x) for x in LEVEL_NAMES)

# defaults (also the Dirichlet prior): relative weights, normalised below
_M0 = (
    (0.55, 0.2, 0.12, 0.06, 0.035, 0.02, 0.015),
    (0.3, 0.2, 0.2, 0.15, 0.04, 0.01, 0.25, 0.08, 0.03, 0.005, 0.2, 0.1, 0.04, 0.01),
    (0.06, 0.14, 0.7, 0.1),
    (0.1, 0.3, 0.6),
    (0.02, 0.9, 0.08),
)
_U0 = (
    (0.005, 0.01, 0.03, 0.07, 0.13, 0.3, 0.455),
    (0.3, 0.005, 0.02, 0.08, 0.15, 0.45, 0.01, 0.02, 0.1, 0.3, 0.02, 0.05, 0.15, 0.4),
    (0.35, 0.3, 0.25, 0.1),
    (0.35, 0.35, 0.3),
    (0.1, 0.89, 0.01),
)


def _norm(v: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / a.sum()


@dataclass
class PairEvidence:
    li: np.ndarray
    rj: np.ndarray
    name_sim: np.ndarray  # token-sort, 0..100
    set_sim: np.ndarray  # token-set, 0..100 (for splits and merges)
    dist_m: np.ndarray  # NaN: not both located
    iou: np.ndarray  # NaN: not both with territories
    levels: np.ndarray  # (n, 5) int8: the feature levels
    alt_name: np.ndarray  # name level from max(token-sort, token-set)

    def __len__(self) -> int:
        return len(self.li)


def _level_spacing(side: Side, idx: np.ndarray) -> float:
    pts = idx[~np.isnan(side.clon[idx])]
    if len(pts) < 2:
        return 10_000.0
    lat0 = float(np.mean(side.clat[pts]))
    xy = project(side.clon[pts], side.clat[pts], lat0)
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(max(np.median(d[:, 1]), 50.0))


def _type_ids(sets: list[frozenset[str]], table: dict[frozenset[str], int]) -> np.ndarray:
    return np.fromiter((table.setdefault(s, len(table)) for s in sets), dtype=np.int64,
                       count=len(sets))


def _name_level(sim: np.ndarray, exact: np.ndarray) -> np.ndarray:
    lvl = np.full(len(sim), len(NAME_CUTS) + 1, dtype=np.int8)
    for k, cut in reversed(list(enumerate(NAME_CUTS))):
        lvl[sim >= cut] = k + 1
    lvl[exact] = 0
    return lvl


def evidence(left: Side, right: Side, cand: Candidates, match_of_left: np.ndarray,
             nbh: Neighbourhood, dr: int, workers: int = 1) -> PairEvidence:
    li, rj = cand.li, cand.rj
    n = len(li)
    lcore = [left.core[i] for i in li.tolist()]
    rcore = [right.core[j] for j in rj.tolist()]
    name_sim = cand.name_sim.astype(np.float32)
    set_sim = (process.cpdist(lcore, rcore, scorer=fuzz.token_set_ratio, dtype=np.float32,
                              workers=workers) if n else np.empty(0, dtype=np.float32))
    exact = np.fromiter((a == b for a, b in zip(lcore, rcore, strict=True)), dtype=bool, count=n)
    # aliases: the best of every name a unit is known by
    for k in [k for k in range(n) if left.alias_core[li[k]] or right.alias_core[rj[k]]]:
        lnames = [left.core[li[k]], *left.alias_core[li[k]]]
        rnames = [right.core[rj[k]], *right.alias_core[rj[k]]]
        best = max(fuzz.token_sort_ratio(a, b) for a in lnames for b in rnames)
        name_sim[k] = max(name_sim[k], best)
        exact[k] = exact[k] or bool(set(lnames) & set(rnames))
    levels = np.zeros((n, 5), dtype=np.int8)
    levels[:, 0] = _name_level(name_sim, exact)
    alt = _name_level(np.maximum(name_sim, set_sim), exact)
    # geo
    geo = np.zeros(n, dtype=np.int8)
    dist = haversine_m(left.lon[li], left.lat[li], right.lon[rj], right.lat[rj])
    pts = ~np.isnan(dist)
    for k, cut in reversed(list(enumerate(POINT_CUTS))):
        geo[pts & (dist <= cut)] = 1 + k
    geo[pts & (dist > POINT_CUTS[-1])] = 5
    iou = np.full(n, np.nan)
    both_terr = np.fromiter((int(i) in left.territory and int(j) in right.territory
                             for i, j in zip(li.tolist(), rj.tolist(), strict=True)),
                            dtype=bool, count=n) & ~pts
    if both_terr.any():
        a = np.array([left.territory[i] for i in li[both_terr].tolist()], dtype=object)
        b = np.array([right.territory[j] for j in rj[both_terr].tolist()], dtype=object)
        with warnings.catch_warnings():  # GEOS warns on slivers of touching polygons
            warnings.simplefilter("ignore", RuntimeWarning)
            inter = shapely.area(shapely.intersection(a, b))
        union = shapely.area(a) + shapely.area(b) - inter
        iou[both_terr] = np.where(union > 0, inter / np.maximum(union, 1e-18), 0.0)
        g = np.full(int(both_terr.sum()), 9, dtype=np.int8)
        v = iou[both_terr]
        for k, cut in reversed(list(enumerate(IOU_CUTS))):
            g[v > cut if k == 2 else v >= cut] = 6 + k
        geo[both_terr] = g
    rest = ~pts & ~both_terr
    if rest.any():
        cd = haversine_m(left.clon[li[rest]], left.clat[li[rest]], right.clon[rj[rest]],
                         right.clat[rj[rest]])
        spacing = _level_spacing(right, right.by_depth.get(dr, np.empty(0, dtype=np.int64)))
        rel = cd / spacing
        g = np.zeros(int(rest.sum()), dtype=np.int8)
        ok = ~np.isnan(rel)
        g[ok] = 13
        for k, cut in reversed(list(enumerate(CENTROID_CUTS))):
            g[ok & (rel <= cut)] = 10 + k
        geo[rest] = g
        dist[rest] = cd
    levels[:, 1] = geo
    # parent agreement
    pl = left.parent[li]
    mp = np.where(pl >= 0, match_of_left[np.maximum(pl, 0)], -1)
    pr = right.parent[rj]
    same = ((pl < 0) & (pr < 0)) | ((mp >= 0) & (mp == pr))
    neigh = (mp >= 0) & (pr >= 0) & np.isin(mp * nbh.n + pr, nbh.pairs) & ~same
    levels[:, 2] = np.where(same, 2, np.where(neigh, 1, np.where((pl >= 0) & (mp < 0), 3, 0)))
    # type words
    table: dict[frozenset[str], int] = {}
    lt = _type_ids(left.types, table)
    rt = _type_ids(right.types, table)
    keys = list(table)
    agree = np.ones((len(keys), len(keys)), dtype=np.int8)
    for x, a_set in enumerate(keys):
        for y, b_set in enumerate(keys):
            if a_set and b_set:
                agree[x, y] = 2 if a_set & b_set else 0
    levels[:, 3] = agree[lt[li], rt[rj]]
    # codes
    lc = [left.code[i] for i in li.tolist()]
    rc = [right.code[j] for j in rj.tolist()]
    levels[:, 4] = np.fromiter(
        (1 if a is None or b is None else (2 if a.casefold() == b.casefold() else 0)
         for a, b in zip(lc, rc, strict=True)), dtype=np.int8, count=n)
    return PairEvidence(li, rj, name_sim, set_sim, dist, iou, levels, alt)


class FellegiSunter:
    """m/u per feature level and the prior; EM on the unique patterns of a level's pairs."""

    def __init__(self, prior_strength: float = 40.0) -> None:
        self.m = [_norm(v) for v in _M0]
        self.u = [_norm(v) for v in _U0]
        self.p = 0.1
        self.alpha = prior_strength
        self.prior_used = prior_strength  # more when a first fit made no sense (see fit)
        self.iterations = 0

    def _loglik(self, pats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lm = np.zeros(len(pats))
        lu = np.zeros(len(pats))
        for f in range(len(FEATURES)):
            lm += np.log(self.m[f][pats[:, f]])
            lu += np.log(self.u[f][pats[:, f]])
        return lm, lu

    def fit(self, levels: np.ndarray, iterations: int, expected_matches: float | None = None
            ) -> FellegiSunter:
        if len(levels) == 0:
            return self
        pats, counts = np.unique(levels.astype(np.int64), axis=0, return_counts=True)
        counts = counts.astype(float)
        total = counts.sum()
        # the share of true pairs is fixed by the 1:1 nature of the task (about one match per
        # unit), not estimated: otherwise EM may take "close on the ground" for the match class
        self.p = float(min(0.9, max(1e-4, (expected_matches or total * 0.1) / total)))
        alpha = self.alpha
        for _ in range(4):
            self._em(pats, counts, iterations, alpha)
            self.prior_used = alpha
            if self.oriented():
                return self
            # EM found another cluster than "same place" — typically "near each other under
            # the same parent", names less than half alike counting *for* it: again, with
            # the defaults weighing more
            alpha = max(alpha, 1.0) * 10 + total * 0.05
        self.m = [_norm(v) for v in _M0]  # no sensible fit: the defaults as they are
        self.u = [_norm(v) for v in _U0]
        self.prior_used = float("inf")
        return self

    def oriented(self) -> bool:
        """Does the model say what "same place" means: an equal name is evidence for it,
        and far stronger evidence than a name less than half alike?"""
        w = np.log2(self.m[0] / self.u[0])
        return bool(w[0] > 0 and w[0] > w[-1] + 1)

    def _em(self, pats: np.ndarray, counts: np.ndarray, iterations: int, alpha: float
            ) -> None:
        self.m = [_norm(v) for v in _M0]
        self.u = [_norm(v) for v in _U0]
        m0 = [_norm(v) for v in _M0]
        u0 = [_norm(v) for v in _U0]
        for it in range(iterations):
            g = self._posterior(pats)
            wm, wu = counts * g, counts * (1 - g)
            new_m, new_u = [], []
            for f, size in enumerate(SIZES):
                cm = np.bincount(pats[:, f], weights=wm, minlength=size) + alpha * m0[f]
                cu = np.bincount(pats[:, f], weights=wu, minlength=size) + alpha * u0[f]
                new_m.append(np.maximum(cm / cm.sum(), 1e-6))
                new_u.append(np.maximum(cu / cu.sum(), 1e-6))
            delta = max(float(np.abs(a - b).max()) for a, b in zip(new_m, self.m, strict=True))
            self.m, self.u = new_m, new_u
            self.iterations = it + 1
            if delta < 1e-5:
                break

    def _posterior(self, pats: np.ndarray) -> np.ndarray:
        lm, lu = self._loglik(pats)
        logit = np.log(self.p) - np.log1p(-self.p) + lm - lu
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -40, 40)))

    def score(self, levels: np.ndarray) -> np.ndarray:
        if len(levels) == 0:
            return np.empty(0)
        return self._posterior(levels.astype(np.int64))

    def weights(self, row: np.ndarray) -> dict[str, float]:
        """log2(m/u) of each feature's level: why a pair scores as it does."""
        return {f: round(float(np.log2(self.m[k][row[k]] / self.u[k][row[k]])), 2)
                for k, f in enumerate(FEATURES)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": round(self.p, 5),
            "iterations": self.iterations,
            "prior_strength": None if np.isinf(self.prior_used) else round(self.prior_used, 1),
            "m": {f: dict(zip(LEVEL_NAMES[k], np.round(self.m[k], 4).tolist(), strict=True))
                  for k, f in enumerate(FEATURES)},
            "u": {f: dict(zip(LEVEL_NAMES[k], np.round(self.u[k], 4).tolist(), strict=True))
                  for k, f in enumerate(FEATURES)},
        }
