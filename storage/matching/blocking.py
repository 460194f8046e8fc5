"""Candidate pairs of one level, top-down: under the parent's match, its neighbours, nearby.

For a left unit whose parent is matched to P', the candidates are the children
of P' and of P''s neighbouring units (nearest centroids, touching territories);
whose parent is unmatched but an ancestor A is matched to A', the units of the
level under A'; with no matched ancestor, the whole level when it is small.  In
every block a pair is kept when the names are similar enough or the units are
close on the ground.  On top come spatial candidates from an index: points
within ``point_radius_m``, territories that overlap — so a unit filed under a
wrong parent is still found.  Units without coordinates are still matched by
name under their parent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import shapely
from rapidfuzz import fuzz, process
from scipy.spatial import cKDTree

from storage.matching.config import MatchConfig
from storage.matching.geo import haversine_m, project
from storage.matching.side import Side

OPEN = -2  # block key: no matched ancestor


@dataclass
class Neighbourhood:
    """Neighbours among the right units of one depth (parents of the level being matched)."""

    pairs: np.ndarray  # int64 keys a * n + b for neighbouring right units a, b
    lists: dict[int, list[int]]
    n: int

    def of(self, unit: int) -> list[int]:
        return self.lists.get(unit, [])


def neighbourhood(side: Side, depth: int, k: int) -> Neighbourhood:
    n = len(side)
    units = side.by_depth.get(depth, np.empty(0, dtype=np.int64))
    lists: dict[int, set[int]] = defaultdict(set)
    located = units[~np.isnan(side.clon[units])] if len(units) else units
    if k > 0 and len(located) > 1:
        lat0 = float(np.nanmean(side.clat[located]))
        tree = cKDTree(project(side.clon[located], side.clat[located], lat0))
        kk = min(k + 1, len(located))
        _, idx = tree.query(project(side.clon[located], side.clat[located], lat0), k=kk)
        for row, a in zip(idx.reshape(len(located), kk), located.tolist(), strict=True):
            for b in row.tolist():
                if b < len(located) and located[b] != a:
                    lists[a].add(int(located[b]))
    with_terr = [i for i in units.tolist() if i in side.territory]
    if len(with_terr) > 1:
        geoms = np.array([side.territory[i] for i in with_terr], dtype=object)
        tree = shapely.STRtree(geoms)
        src, dst = tree.query(geoms, predicate="intersects")
        for s, d in zip(src.tolist(), dst.tolist(), strict=True):
            if s != d:
                lists[with_terr[s]].add(with_terr[d])
    keys = [a * n + b for a, bs in lists.items() for b in bs]
    return Neighbourhood(np.array(sorted(keys), dtype=np.int64),
                         {a: sorted(bs) for a, bs in lists.items()}, n)


@dataclass
class Candidates:
    li: np.ndarray
    rj: np.ndarray
    name_sim: np.ndarray  # token-sort similarity of the core names, 0..100


def _names(side: Side, idx: np.ndarray) -> list[str]:
    return [side.core[i] for i in idx.tolist()]


def level_candidates(left: Side, right: Side, dl: int, dr: int, match_of_left: np.ndarray,
                     nbh: Neighbourhood, cfg: MatchConfig, workers: int = 1) -> Candidates:
    L = left.by_depth.get(dl, np.empty(0, dtype=np.int64))
    R = right.by_depth.get(dr, np.empty(0, dtype=np.int64))
    if len(L) == 0 or len(R) == 0:
        e = np.empty(0, dtype=np.int64)
        return Candidates(e, e, np.empty(0, dtype=np.float32))
    # --- the block of every left unit -----------------------------------------------
    r_set = np.zeros(len(right), dtype=bool)
    r_set[R] = True
    blocks: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in L.tolist():
        a, steps = int(left.parent[i]), 1
        while a >= 0 and match_of_left[a] < 0:
            a, steps = int(left.parent[a]), steps + 1
        if a < 0:
            blocks[(OPEN, 0)].append(i)
        else:
            blocks[(int(match_of_left[a]), 1 if steps == 1 else 0)].append(i)
    anc_groups: dict[int, dict[int, list[int]]] = {}
    cutoff = cfg.min_name_similarity * 100
    radius = cfg.point_radius_m
    out_l: list[np.ndarray] = []
    out_r: list[np.ndarray] = []
    out_s: list[np.ndarray] = []
    for (anchor, direct), members in blocks.items():
        if anchor == OPEN:
            if len(R) > cfg.max_open_block:
                continue  # spatial candidates only
            pool = R
        elif direct:
            ids = [anchor, *nbh.of(anchor)]
            pool = np.array([c for p in ids for c in right.children[p] if r_set[c]],
                            dtype=np.int64)
        else:
            adepth = int(right.depth[anchor])
            if adepth not in anc_groups:
                anc = R.copy()
                for _ in range(max(0, dr - adepth)):
                    anc = np.where(anc >= 0, right.parent[np.maximum(anc, 0)], -1)
                groups: dict[int, list[int]] = defaultdict(list)
                for r, a in zip(R.tolist(), anc.tolist(), strict=True):
                    groups[a].append(r)
                anc_groups[adepth] = groups
            pool = np.array(anc_groups[adepth].get(anchor, []), dtype=np.int64)
        if len(pool) == 0:
            continue
        lm = np.array(members, dtype=np.int64)
        sim = process.cdist(_names(left, lm), _names(right, pool), scorer=fuzz.token_sort_ratio,
                            score_cutoff=cutoff, dtype=np.float32, workers=workers)
        _alias_similarity(left, right, lm, pool, sim, cutoff, workers)
        keep = sim >= cutoff
        dist = haversine_m(left.lon[lm][:, None], left.lat[lm][:, None],
                           right.lon[pool][None, :], right.lat[pool][None, :])
        near = dist <= radius
        if near.shape[1] > cfg.nearest:  # only the k nearest of each unit count as "near"
            kth = np.partition(np.where(near, dist, np.inf), cfg.nearest - 1, axis=1)[
                :, cfg.nearest - 1:cfg.nearest]
            near &= dist <= kth
        keep |= near
        a_idx, b_idx = np.nonzero(keep)
        out_l.append(lm[a_idx])
        out_r.append(pool[b_idx])
        out_s.append(sim[a_idx, b_idx])
    # --- spatial candidates from an index ------------------------------------------
    sp_l, sp_r = _spatial(left, right, L, R, radius, cfg.nearest)
    if len(sp_l):
        out_l.append(sp_l)
        out_r.append(sp_r)
        out_s.append(np.full(len(sp_l), -1, dtype=np.float32))
    if not out_l:
        e = np.empty(0, dtype=np.int64)
        return Candidates(e, e, np.empty(0, dtype=np.float32))
    li = np.concatenate(out_l)
    rj = np.concatenate(out_r)
    sims = np.concatenate(out_s)
    key = li * len(right) + rj
    # a pair found twice keeps its first (block) similarity
    _, first = np.unique(key, return_index=True)
    li, rj, sims = li[first], rj[first], sims[first]
    todo = sims < 0
    if todo.any():
        sims[todo] = process.cpdist(
            [left.core[i] for i in li[todo].tolist()], [right.core[j] for j in rj[todo].tolist()],
            scorer=fuzz.token_sort_ratio, dtype=np.float32, workers=workers)
    return Candidates(li, rj, sims)


def _alias_similarity(left: Side, right: Side, lm: np.ndarray, pool: np.ndarray,
                      sim: np.ndarray, cutoff: float, workers: int) -> None:
    """Raise ``sim`` (members x pool) to the best of the other names a unit goes by
    (aliases, the parts of "A / B"), so such units are candidates by name too."""
    for rows, cols, a_side, b_side, flip in ((lm, pool, left, right, False),
                                             (pool, lm, right, left, True)):
        has = np.flatnonzero(b_side.has_alias[cols])
        if len(has) == 0:
            continue
        owner = [int(k) for k in has.tolist() for _ in b_side.alias_core[int(cols[k])]]
        names = [x for k in has.tolist() for x in b_side.alias_core[int(cols[k])]]
        s = process.cdist(_names(a_side, rows), names, scorer=fuzz.token_sort_ratio,
                          score_cutoff=cutoff, dtype=np.float32, workers=workers)
        for c, k in enumerate(owner):
            if flip:
                sim[k, :] = np.maximum(sim[k, :], s[:, c])
            else:
                sim[:, k] = np.maximum(sim[:, k], s[:, c])


def _spatial(left: Side, right: Side, L: np.ndarray, R: np.ndarray, radius: float,
             nearest: int) -> tuple[np.ndarray, np.ndarray]:
    ls: list[np.ndarray] = []
    rs: list[np.ndarray] = []
    lp = L[~np.isnan(left.lon[L])]
    rp = R[~np.isnan(right.lon[R])]
    if len(lp) and len(rp):
        lat0 = float(np.mean(right.lat[rp]))
        tree = cKDTree(project(right.lon[rp], right.lat[rp], lat0))
        k = min(nearest, len(rp))
        d, hit = tree.query(project(left.lon[lp], left.lat[lp], lat0), k=k,
                            distance_upper_bound=radius * 1.02)
        d, hit = d.reshape(len(lp), k), hit.reshape(len(lp), k)
        ok = np.isfinite(d)
        ls.append(np.repeat(lp, k).reshape(len(lp), k)[ok])
        rs.append(rp[hit[ok]])
    lt = [i for i in L.tolist() if i in left.territory]
    rt = [j for j in R.tolist() if j in right.territory]
    if lt and rt:
        tree = shapely.STRtree(np.array([right.territory[j] for j in rt], dtype=object))
        a, b = tree.query(np.array([left.territory[i] for i in lt], dtype=object),
                          predicate="intersects")
        ls.append(np.asarray(lt, dtype=np.int64)[a])
        rs.append(np.asarray(rt, dtype=np.int64)[b])
    if not ls:
        e = np.empty(0, dtype=np.int64)
        return e, e
    return np.concatenate(ls), np.concatenate(rs)
