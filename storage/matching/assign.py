"""1:1 assignment within each block of competing pairs, and the runner-up of each pair.

The candidate pairs of a level form a bipartite graph; each connected component
is a block whose units compete only with each other.  Within a block
``scipy.optimize.linear_sum_assignment`` picks the pairs that maximise the sum of
scores (the expected number of right links).  Very large blocks (rare: a level
with no parents and no coordinates) fall back to greedy best-first.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROUNDS = 6  # mean-field rounds of competing()
MAX_DENSE = 400_000  # cells of one block's matrix before falling back to greedy


def _greedy(li: np.ndarray, rj: np.ndarray, p: np.ndarray) -> np.ndarray:
    chosen = np.zeros(len(p), dtype=bool)
    used_l: set[int] = set()
    used_r: set[int] = set()
    for k in np.argsort(-p, kind="stable").tolist():
        a, b = int(li[k]), int(rj[k])
        if a not in used_l and b not in used_r:
            chosen[k] = True
            used_l.add(a)
            used_r.add(b)
    return chosen


def assign(li: np.ndarray, rj: np.ndarray, p: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Boolean mask of the chosen pairs among ``eligible`` ones (at most one per unit)."""
    chosen = np.zeros(len(p), dtype=bool)
    idx = np.flatnonzero(eligible)
    if len(idx) == 0:
        return chosen
    lu, linv = np.unique(li[idx], return_inverse=True)
    ru, rinv = np.unique(rj[idx], return_inverse=True)
    nl, nr = len(lu), len(ru)
    graph = coo_matrix((np.ones(len(idx)), (linv, nl + rinv)), shape=(nl + nr, nl + nr))
    _, labels = connected_components(graph, directed=False)
    comp = labels[linv]
    sizes = np.bincount(comp)
    single = sizes[comp] == 1
    chosen[idx[single]] = True
    multi = np.flatnonzero(~single)
    if len(multi) == 0:
        return chosen
    order = multi[np.argsort(comp[multi], kind="stable")]
    cuts = np.flatnonzero(np.diff(comp[order])) + 1
    for group in np.split(order, cuts):
        k = idx[group]
        a = linv[group]
        b = rinv[group]
        ua, ia = np.unique(a, return_inverse=True)
        ub, ib = np.unique(b, return_inverse=True)
        if len(ua) * len(ub) > MAX_DENSE:
            chosen[k[_greedy(a, b, p[k])]] = True
            continue
        mat = np.zeros((len(ua), len(ub)))
        mat[ia, ib] = p[k]
        rows, cols = linear_sum_assignment(mat, maximize=True)
        pick = np.full((len(ua), len(ub)), -1, dtype=np.int64)
        pick[ia, ib] = np.arange(len(k))
        sel = pick[rows, cols]
        sel = sel[sel >= 0]
        chosen[k[sel]] = True
    return chosen


def best_two(keys: np.ndarray, p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per node: the best score, the pair index giving it, and the second-best score."""
    best = np.zeros(n)
    best_pair = np.full(n, -1, dtype=np.int64)
    second = np.zeros(n)
    if len(keys) == 0:
        return best, best_pair, second
    order = np.lexsort((-p, keys))
    ks = keys[order]
    first = np.r_[True, ks[1:] != ks[:-1]]
    best[ks[first]] = p[order][first]
    best_pair[ks[first]] = order[first]
    sec = ~first & np.r_[False, first[:-1]]
    second[ks[sec]] = p[order][sec]
    return best, best_pair, second


def runner_up(li: np.ndarray, rj: np.ndarray, p: np.ndarray, n_left: int, n_right: int
              ) -> np.ndarray:
    """For each pair, the best score of any *other* pair sharing its left or right unit."""
    bl, bpl, sl = best_two(li, p, n_left)
    br, bpr, sr = best_two(rj, p, n_right)
    k = np.arange(len(p))
    other_l = np.where(bpl[li] == k, sl[li], bl[li])
    other_r = np.where(bpr[rj] == k, sr[rj], br[rj])
    return np.maximum(other_l, other_r)


def competing(li: np.ndarray, rj: np.ndarray, p: np.ndarray, n_left: int, n_right: int,
              none_weight: float = 0.1, rounds: int = ROUNDS) -> np.ndarray:
    """Scores that account for rivals: a unit has at most one counterpart.

    Each pair's posterior ``p`` was computed as if it were alone; with odds
    o = p / (1 - p), the share of the pair among everything its two units could be
    (no match, or one of their candidates) is ``o / (w + Σ o(left's pairs) +
    Σ o(right's pairs) - o)``, where ``w`` = 1 - 0.9 is the prior weight of "no
    counterpart" (the pair prior already spreads the 0.9 over the candidates).  Two
    equally good rivals each get about 0.5.
    """
    odds = np.minimum(p, 1 - 1e-9) / np.maximum(1 - p, 1e-9)
    odds = np.minimum(odds, 1e9)
    sl = np.bincount(li, weights=odds, minlength=n_left)
    sr = np.bincount(rj, weights=odds, minlength=n_right)
    q = odds / (none_weight + sl[li] + sr[rj] - odds)
    # a rival only competes as much as it is still free: one that is surely taken by
    # another unit hardly lowers this pair's score (a few mean-field rounds)
    for _ in range(rounds):
        taken_l = np.bincount(li, weights=q, minlength=n_left)
        taken_r = np.bincount(rj, weights=q, minlength=n_right)
        free_r = np.clip(1 - (taken_r[rj] - q), 0, 1)  # j not taken by another left unit
        free_l = np.clip(1 - (taken_l[li] - q), 0, 1)
        rivals_l = np.bincount(li, weights=odds * free_r, minlength=n_left)[li] - odds * free_r
        rivals_r = np.bincount(rj, weights=odds * free_l, minlength=n_right)[rj] - odds * free_l
        q = 0.5 * q + 0.5 * odds / (none_weight + odds + rivals_l + rivals_r)
    return q
