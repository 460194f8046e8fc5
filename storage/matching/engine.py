"""The matcher: level by level from the top, parents first, on two loaded sides.

Pure computation (no database): :func:`match_sides` takes two
:class:`~storage.matching.side.Side` objects and earlier human decisions and
returns the links with their scores, statuses, kinds and evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.matching.assign import assign, competing, runner_up
from storage.matching.blocking import level_candidates, neighbourhood
from storage.matching.config import MatchConfig
from storage.matching.scoring import (
    FEATURES,
    LEVEL_NAMES,
    FellegiSunter,
    PairEvidence,
    evidence,
)
from storage.matching.side import Side

EDGE_MIN = 0.02  # pairs below this score never compete in the assignment
SPLIT_MIN = 0.5  # score (names compared token-set) for a second link of a split or merge
SPLIT_NAME_LEVEL = 2  # ... and names at least 85 % alike (token-set)


@dataclass
class Decision:
    """A reviewer's earlier decision on a pair, carried into a new run."""

    status: str  # accepted | rejected
    kind: str
    reviewer: str | None
    reviewed_at: str | None
    link_id: int
    score: float | None


@dataclass
class Link:
    left: int
    right: int
    score: float
    status: str  # auto | review | accepted | rejected
    kind: str  # one_to_one | split | merge
    evidence: dict[str, Any]
    decision: Decision | None = None


@dataclass
class MatchResult:
    links: list[Link] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)
    unmatched_left: list[int] = field(default_factory=list)
    unmatched_right: list[int] = field(default_factory=list)
    decisions_dropped: int = 0


def _evidence(left: Side, right: Side, ev: PairEvidence, k: int, model: FellegiSunter,
              runner: float) -> dict[str, Any]:
    i, j = int(ev.li[k]), int(ev.rj[k])
    row = ev.levels[k]
    lp, rp = int(left.parent[i]), int(right.parent[j])
    dist = ev.dist_m[k]
    iou = ev.iou[k]
    return {
        "level": int(left.depth[i]),
        "left_name": left.name[i],
        "right_name": right.name[j],
        "left_normalised": left.core[i],
        "right_normalised": right.core[j],
        "name_similarity": round(float(ev.name_sim[k]) / 100, 3),
        "distance_m": None if np.isnan(dist) else round(float(dist), 1),
        "overlap_iou": None if np.isnan(iou) else round(float(iou), 3),
        "parent": LEVEL_NAMES[2][row[2]],
        "left_parent": left.name[lp] if lp >= 0 else None,
        "right_parent": right.name[rp] if rp >= 0 else None,
        "type": LEVEL_NAMES[3][row[3]],
        "left_types": sorted(left.types[i]),
        "right_types": sorted(right.types[j]),
        "code": LEVEL_NAMES[4][row[4]],
        "levels": {f: LEVEL_NAMES[n][row[n]] for n, f in enumerate(FEATURES)},
        "weights": model.weights(row),
        "runner_up": round(float(runner), 3),
    }


def _manual_evidence(left: Side, right: Side, i: int, j: int) -> dict[str, Any]:
    return {"level": int(left.depth[i]), "left_name": left.name[i], "right_name": right.name[j],
            "left_normalised": left.core[i], "right_normalised": right.core[j],
            "note": "not a candidate of this run; kept from an earlier review"}


def match_sides(left: Side, right: Side, cfg: MatchConfig, *,
                decisions: dict[tuple[int, int], Decision] | None = None,
                progress: Callable[[int, int, str], None] | None = None,
                workers: int = 1) -> MatchResult:
    decisions = decisions or {}
    result = MatchResult()
    match_of_left = np.full(len(left), -1, dtype=np.int64)
    linked_left = np.zeros(len(left), dtype=bool)
    linked_right = np.zeros(len(right), dtype=bool)
    depths = sorted(left.by_depth)
    by_level: dict[int, list[tuple[int, int, Decision]]] = {}
    for (i, j), dec in decisions.items():
        by_level.setdefault(int(left.depth[i]), []).append((i, j, dec))
    for n, dl in enumerate(depths):
        dr = dl + cfg.depth_offset
        if progress:
            progress(n, len(depths), f"Matching level {dl}")
        nbh = neighbourhood(right, dr - 1, cfg.neighbours)
        cand = level_candidates(left, right, dl, dr, match_of_left, nbh, cfg, workers)
        ev = evidence(left, right, cand, match_of_left, nbh, dr, workers)
        n_left = len(left.by_depth.get(dl, []))
        n_right = len(right.by_depth.get(dr, []))
        model = FellegiSunter(cfg.prior_strength).fit(
            ev.levels, cfg.em_iterations, expected_matches=0.9 * min(n_left, n_right))
        p = model.score(ev.levels)
        p_alt = model.score(np.column_stack([ev.alt_name, ev.levels[:, 1:]]))
        # --- earlier human decisions win -------------------------------------------
        key = ev.li * len(right) + ev.rj
        pair_at = {int(k): x for x, k in enumerate(key.tolist())}
        locked_l = np.zeros(len(left), dtype=bool)
        locked_r = np.zeros(len(right), dtype=bool)
        level_links: list[Link] = []
        for i, j, dec in by_level.get(dl, []):
            x = pair_at.get(i * len(right) + j)
            if x is not None and dec.status == "rejected":
                p[x] = p_alt[x] = 0.0
            if dec.status != "accepted":
                ev_d = (_evidence(left, right, ev, x, model, 0.0) if x is not None
                        else _manual_evidence(left, right, i, j))
                level_links.append(Link(i, j, float(dec.score or 0.0), "rejected", dec.kind,
                                        ev_d, dec))
                continue
            locked_l[i] = locked_r[j] = True
            score = float(p[x]) if x is not None else float(dec.score or 1.0)
            ev_d = (_evidence(left, right, ev, x, model, 0.0) if x is not None
                    else _manual_evidence(left, right, i, j))
            level_links.append(Link(i, j, score, "accepted", dec.kind, ev_d, dec))
            match_of_left[i] = j
        # --- 1:1 assignment -----------------------------------------------------------
        eligible = (p >= EDGE_MIN) & ~locked_l[ev.li] & ~locked_r[ev.rj]
        q = competing(ev.li, ev.rj, np.where(eligible, p, 0.0), len(left), len(right))
        chosen = assign(ev.li, ev.rj, q, eligible)
        runner = runner_up(ev.li, ev.rj, np.where(eligible, p, 0.0), len(left), len(right))
        assigned_l = np.full(len(left), -1, dtype=np.int64)
        assigned_r = np.full(len(right), -1, dtype=np.int64)
        primary: dict[int, Link] = {}
        for x in np.flatnonzero(chosen & (q >= cfg.review_threshold)).tolist():
            i, j = int(ev.li[x]), int(ev.rj[x])
            auto = q[x] >= cfg.auto_threshold and (cfg.ambiguity >= 1 or runner[x] < cfg.ambiguity)
            e = _evidence(left, right, ev, x, model, float(runner[x]))
            e["pair_score"] = round(float(p[x]), 4)
            link = Link(i, j, float(q[x]), "auto" if auto else "review", "one_to_one", e)
            level_links.append(link)
            primary[x] = link
            assigned_l[i], assigned_r[j] = j, i
            match_of_left[i] = j
        # --- one-to-many: a unit split in two, two merged into one ----------------------
        by_pair = {(lk.left, lk.right): lk for lk in primary.values()}
        splits = _one_to_many(ev, p_alt, p > 0, assigned_l, assigned_r, locked_l, locked_r)
        for x, kind in splits:
            i, j = int(ev.li[x]), int(ev.rj[x])
            main = (by_pair.get((i, int(assigned_l[i]))) if kind == "split"
                    else by_pair.get((int(assigned_r[j]), j)))
            if main is not None:
                main.kind = kind
            e = _evidence(left, right, ev, x, model, float(runner[x]))
            e["name_similarity_token_set"] = round(float(ev.set_sim[x]) / 100, 3)
            level_links.append(Link(i, j, float(p_alt[x]), "review", kind, e))
        for lk in level_links:
            if lk.status != "rejected":
                linked_left[lk.left] = linked_right[lk.right] = True
        result.links.extend(level_links)
        counts: dict[str, int] = {}
        for lk in level_links:
            counts[lk.status] = counts.get(lk.status, 0) + 1
        result.levels.append({
            "depth": dl, "left_units": n_left, "right_units": n_right,
            "candidate_pairs": len(ev), "links": counts, "model": model.to_dict(),
        })
    result.unmatched_left = np.flatnonzero(~linked_left).tolist()
    result.unmatched_right = np.flatnonzero(~linked_right).tolist()
    if progress:
        progress(len(depths), len(depths), "Matched")
    return result


def _one_to_many(ev: PairEvidence, p_alt: np.ndarray, eligible: np.ndarray,
                 assigned_l: np.ndarray, assigned_r: np.ndarray, locked_l: np.ndarray,
                 locked_r: np.ndarray) -> list[tuple[int, str]]:
    """Second links: an unassigned right unit to an assigned left unit (split), and back."""
    out: list[tuple[int, str]] = []
    li, rj = ev.li, ev.rj
    # a part of a unit shares its name ("Kenema Hospital Annex", "X / Y"): being close is
    # not enough, facilities often stand side by side
    ok = eligible & (p_alt >= SPLIT_MIN) & (ev.alt_name <= SPLIT_NAME_LEVEL)
    split = ok & (assigned_r[rj] < 0) & ~locked_r[rj] & (assigned_l[li] >= 0) & (
        assigned_l[li] != rj)
    merge = ok & (assigned_l[li] < 0) & ~locked_l[li] & (assigned_r[rj] >= 0) & (
        assigned_r[rj] != li)
    for mask, keys, kind in ((split, rj, "split"), (merge, li, "merge")):
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            continue
        order = idx[np.lexsort((-p_alt[idx], keys[idx]))]
        ks = keys[order]
        first = np.r_[True, ks[1:] != ks[:-1]]
        out.extend((int(x), kind) for x in order[first].tolist())
    # a unit already linked at this level by the other direction is not linked twice
    seen_l: set[int] = set()
    seen_r: set[int] = set()
    final = []
    for x, kind in out:
        i, j = int(li[x]), int(rj[x])
        if (kind == "split" and j in seen_r) or (kind == "merge" and i in seen_l):
            continue
        seen_l.add(i)
        seen_r.add(j)
        final.append((x, kind))
    return final
