"""Iaso's "Name and parent similarity" matching, re-implemented for the benchmark.

From the description in docs/reference/iaso.md §6 (BLSQ/iaso,
``iaso/matching/matching_algo_name_sim_1.py``, MIT): level by level from the roots,
over the *whole* level at once;

* names normalised with ``strip().lower()`` and removal of the words "aire de santé",
  "poste de santé", "centre de santé", "centre de sante" (nothing else: no accents,
  no punctuation, no fuzzy comparison);
* version-1 (left) names are grouped (aliases too); the version-2 (right) index is a
  dict, so the last right unit with a given name wins;
* a link is made on an **exact** normalised name, with the **same type**, when the
  left unit has no parent or its parent is already linked to the right unit's parent
  in this run;
* score = 100 // (number of left units sharing that name).  Every link is final (Iaso
  has no review band); we count them all as "auto".

It runs on the same loaded sides as Georeg's matcher (:class:`storage.matching.side.Side`).
"""

from __future__ import annotations

from collections import defaultdict

from storage.matching.side import Side

WORDS = ["aire de santé", "poste de santé", "centre de santé", "centre de sante"]


def normalise(name: str) -> str:
    out = name.strip().lower()
    for w in WORDS:
        out = out.replace(w, "")
    return out


def iaso_match(left: Side, right: Side, given: dict[int, set[int]] | None = None
               ) -> list[tuple[int, int, int]]:
    """(left index, right index, score 0..100) for every link Iaso would make.

    ``given``: links made beforehand (left index -> right indexes), e.g. the areas
    linked by hand, as a generous variant; they count as parents already linked
    but are not returned.
    """
    links: list[tuple[int, int, int]] = []
    linked: dict[int, set[int]] = defaultdict(set)  # left unit -> right units linked
    for i, js in (given or {}).items():
        linked[i] |= js
    level_1 = [i for i in range(len(left)) if left.parent[i] < 0]
    level_2 = [j for j in range(len(right)) if right.parent[j] < 0]
    while level_1 and level_2:
        names_1: dict[str, list[int]] = defaultdict(list)
        for i in level_1:
            n = normalise(left.name[i])
            if n:
                names_1[n].append(i)
            for alias in left.aliases[i]:
                a = normalise(alias)
                if a and a != n:
                    names_1[a].append(i)
        names_2 = {normalise(right.name[j]): j for j in level_2}
        for name, items in names_1.items():
            j = names_2.get(name)
            if j is None:
                continue
            for i in items:
                p = int(left.parent[i])
                proceed = p < 0 or int(right.parent[j]) in linked[p]
                if proceed and left.type_name[i] == right.type_name[j] and j not in linked[i]:
                    links.append((i, j, 100 // len(items)))
                    linked[i].add(j)
        level_1 = [c for i in level_1 for c in left.children[i]]
        level_2 = [c for j in level_2 for c in right.children[j]]
    return links
