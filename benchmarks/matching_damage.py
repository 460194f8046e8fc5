"""Derive a second list from a real tree, with realistic damage and the ground truth.

Real trees: the Sierra Leone DHIS2 demo (1,332 units, georeg/demo_data/sierra-leone)
and the DRC schools of Iaso's tree importer (6,687 units,
tests/data/iaso_testdata/schools.csv).  The LEFT list is the tree minus the units
only the right list has; the RIGHT list is derived, seeded, with:

* names: case changes; typos (one edit in a word); spelling variants (ou/u, ie/i,
  k/c, kp/p …); type words abbreviated or written out ("CHP" ↔ "Community Health
  Post", "ECOLE PRIMAIRE" ↔ "E.P.", and — a third of the forms — ones the matcher's
  lists do not know, such as "Comm Hlth Post" or "EC. PRIM."); type words dropped or
  swapped (CHP → MCHP); word order; punctuation; the root (country) only changes case;
* coordinates moved 10 m – 2 km (log-uniform), 30 % of located leaves without
  coordinates; 30 % of area territories dropped, the rest simplified (~300 m);
* 5 % of leaves filed under a neighbouring parent (nearest sibling of their parent);
* 2.5 % of leaves split in two (the second "X Annex", "X Maternity" … nearby) and
  2.5 % merged with a sibling into one unit ("X / Y" or X's name);
* 10 % of leaves on one side only (half left, half right).

Nothing but the damaged name, place and parent links the two lists:

* every right unit gets an opaque random ref (not derived from the left ref, which for
  the DRC schools contains the undamaged name) and a fresh uuid;
* the right list is shuffled within each depth (the matcher must not profit from
  both lists being in the same order);
* codes, as in real life, rarely agree: the left (ministry) list has its own codes
  on 85 % of units; on the right 60 % of units have none, 25 % a code of the
  survey's own scheme, 12 % the ministry code and 3 % the ministry code of *another*
  unit nearby (copy errors);
* the right units keep no extra fields (the DRC schools carry GPS altitude and
  precision, identical on both sides otherwise).

``truth`` is the set of (left_ref, right_ref) pairs that are the same place.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import shapely

from storage.bulk import UnitRecord
from sync.exchange import ImportPayload, ReadOptions, TypeDef

ROOT = Path(__file__).resolve().parent.parent
SL_DIR = ROOT / "georeg" / "demo_data" / "sierra-leone"
SCHOOLS = ROOT / "tests" / "data" / "iaso_testdata"


@dataclass
class Rates:
    case: float = 0.4
    typo: float = 0.25
    variant: float = 0.10
    abbreviation: float = 0.25
    drop_type: float = 0.10
    swap_type: float = 0.05
    word_order: float = 0.10
    punctuation: float = 0.10
    no_coordinates: float = 0.30
    neighbour_parent: float = 0.05
    split: float = 0.025
    merge: float = 0.025
    one_side_only: float = 0.10
    area_typo: float = 0.10
    left_code: float = 0.85  # ministry units with a code
    code_same: float = 0.12  # right units carrying the ministry code
    code_own: float = 0.25  # ... a code of the survey's own scheme
    code_wrong: float = 0.03  # ... the ministry code of another unit nearby


@dataclass
class Damaged:
    name: str
    types: list[TypeDef]
    left: list[UnitRecord]
    right: list[UnitRecord]
    truth: set[tuple[str, str]]
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # right ref -> left ref it came from
    areas: set[str] = field(default_factory=set)  # left refs of the non-leaf units

    def payload(self, side: str) -> ImportPayload:
        units = self.left if side == "left" else self.right
        return ImportPayload(units=[replace(u) for u in units], types=list(self.types),
                             total=len(units))


# --- the real trees ----------------------------------------------------------------------


def sierra_leone() -> tuple[list[UnitRecord], list[TypeDef]]:
    from sync.dhis2_json import read_files

    payload = read_files(sorted(SL_DIR.glob("*.json")))
    return list(payload.units), list(payload.types)


def drc_schools() -> tuple[list[UnitRecord], list[TypeDef]]:
    from sync.formats.tree_csv import read_file

    payload = read_file(SCHOOLS / "schools.csv",
                        ReadOptions(data_dict=str(SCHOOLS / "data_dict.json")))
    return list(payload.units), list(payload.types)


TREES = {"sierra-leone": sierra_leone, "drc-schools": drc_schools}

# --- name damage --------------------------------------------------------------------------

# (written form, alternatives): the forms a ministry list and a survey really use
_ALTERNATIVES: list[tuple[str, list[str]]] = [
    ("MCHP", ["Maternal and Child Health Post", "MCH Post", "M.C.H.P.",
              "Mat. & Child Health Post", "MCH-Post"]),
    ("CHP", ["Community Health Post", "Comm. Health Post", "C.H.P", "Comm Hlth Post"]),
    ("CHC", ["Community Health Centre", "Community Health Center", "C.H.C.",
             "Comm. Health Ctr", "Community H/Centre"]),
    ("Hospital", ["Hosp.", "Hosp", "Hosp'l", "Hsptl"]),
    ("Clinic", ["Health Clinic", "Cl.", "Clin."]),
    ("Govt", ["Government", "Gov.", "Gvt"]),
    ("St", ["Saint", "St."]),
    ("ECOLE PRIMAIRE", ["EP", "E.P.", "E. P.", "EC. PRIM.", "E/P"]),
    ("ECOLE MATERNELLE", ["EM", "E.M.", "EMAT", "EC. MAT."]),
    ("COMPLEXE SCOLAIRE", ["CS", "C.S.", "C/S", "COMPL. SCOL.", "C. SCOL."]),
    ("INSTITUT", ["INST.", "INST", "INSTIT."]),
    ("SAINTE", ["STE", "Ste."]),
    ("SAINT", ["ST", "St."]),
]
# written so that about a third of the forms are unknown to the matcher's type-word lists
# (storage/matching/typewords): real lists hold abbreviations nobody listed beforehand

_TYPE_WORDS = ["MCHP", "CHP", "CHC", "Hospital", "Clinic", "Health Post", "Maternity", "PHU",
               "ECOLE PRIMAIRE", "ECOLE MATERNELLE", "COMPLEXE SCOLAIRE", "ECOLE", "COLLEGE",
               "LYCEE", "INSTITUT", "EP", "EM", "CS"]
_SWAPS = {"MCHP": "CHP", "CHP": "MCHP", "CHC": "MCHP", "Clinic": "CHC",
          "ECOLE PRIMAIRE": "ECOLE", "ECOLE MATERNELLE": "ECOLE", "COMPLEXE SCOLAIRE": "ECOLE",
          "COLLEGE": "LYCEE", "LYCEE": "COLLEGE", "EP": "ECOLE", "EM": "ECOLE"}
_VARIANTS = [("ou", "u"), ("u", "ou"), ("ie", "i"), ("ee", "i"), ("k", "c"), ("c", "k"),
             ("y", "i"), ("i", "y"), ("ph", "f"), ("kp", "p"), ("gb", "b"), ("oh", "o"),
             ("wa", "oua"), ("mb", "b"), ("nd", "n")]
_SPLIT_SUFFIX = ["Annex", "Maternity", "Extension", "2", "Outreach", "Annexe"]


def _word_re(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(word) + r"(?![\w])", re.IGNORECASE)


_TYPE_RES = [(w, _word_re(w)) for w in _TYPE_WORDS]
_ALT_RES = [(w, _word_re(w), alts) for w, alts in _ALTERNATIVES]


def _typo(rng: random.Random, name: str) -> str:
    words = name.split()
    long = [k for k, w in enumerate(words) if len(w) >= 4 and w.isalpha()
            and not any(r.fullmatch(w) for _, r in _TYPE_RES)]
    if not long:
        return name
    k = rng.choice(long)
    w = words[k]
    pos = rng.randrange(1, len(w) - 1)
    op = rng.choice(("sub", "del", "ins", "swap"))
    letters = "aeioulnrstkmb"
    if op == "sub":
        c = rng.choice(letters)
        w = w[:pos] + (c.upper() if w[pos].isupper() else c) + w[pos + 1:]
    elif op == "del":
        w = w[:pos] + w[pos + 1:]
    elif op == "ins":
        c = rng.choice(letters)
        w = w[:pos] + (c.upper() if w[pos].isupper() else c) + w[pos:]
    else:
        w = w[:pos - 1] + w[pos] + w[pos - 1] + w[pos + 1:]
    words[k] = w
    return " ".join(words)


def _variant(rng: random.Random, name: str) -> str:
    options = [(a, b) for a, b in _VARIANTS if a in name.lower()]
    if not options:
        return name
    a, b = rng.choice(options)
    idx = name.lower().find(a)
    repl = b.upper() if name[idx:idx + len(a)].isupper() else b
    return name[:idx] + repl + name[idx + len(a):]


def _abbreviate(rng: random.Random, name: str) -> str:
    hits = [(w, r, alts) for w, r, alts in _ALT_RES if r.search(name)]
    if not hits:
        return name
    _, r, alts = rng.choice(hits)
    return r.sub(rng.choice(alts), name, count=1)


def _type_hits(name: str) -> list[tuple[str, re.Pattern[str]]]:
    return [(w, r) for w, r in _TYPE_RES if r.search(name)]


def _drop_type(rng: random.Random, name: str) -> str:
    hits = _type_hits(name)
    if not hits:
        return name
    _, r = rng.choice(hits)
    out = " ".join(r.sub("", name, count=1).split())
    return out if len(out) >= 3 else name


def _swap_type(rng: random.Random, name: str) -> str:
    hits = [(w, r) for w, r in _type_hits(name) if w in _SWAPS]
    if not hits:
        return name
    w, r = rng.choice(hits)
    return r.sub(_SWAPS[w], name, count=1)


def _word_order(rng: random.Random, name: str) -> str:
    hits = _type_hits(name)
    words = name.split()
    if hits and rng.random() < 0.6:
        w, r = hits[0]
        rest = " ".join(r.sub("", name, count=1).split())
        m = r.search(name)
        assert m is not None
        return f"{rest} {m.group(0)}" if name.lower().startswith(w.lower()) else \
            f"{m.group(0)} {rest}"
    if len(words) >= 2:
        k = rng.randrange(len(words) - 1)
        words[k], words[k + 1] = words[k + 1], words[k]
    return " ".join(words)


def _punctuation(rng: random.Random, name: str) -> str:
    if "(" in name:
        return " ".join(name.replace("(", " ").replace(")", " ").split())
    words = name.split()
    if len(words) >= 2:
        k = rng.randrange(len(words) - 1)
        sep = rng.choice(("-", " - ", ", "))
        return " ".join(words[:k]) + (" " if k else "") + words[k] + sep + " ".join(
            words[k + 1:])
    return name + "."


def _case(rng: random.Random, name: str) -> str:
    return rng.choice((str.upper, str.lower, str.title))(name)


def damage_name(rng: random.Random, name: str, rates: Rates, leaf: bool) -> str:
    out = name
    if leaf:
        steps = [(rates.abbreviation, _abbreviate), (rates.drop_type, _drop_type),
                 (rates.swap_type, _swap_type), (rates.word_order, _word_order),
                 (rates.typo, _typo), (rates.variant, _variant),
                 (rates.punctuation, _punctuation), (rates.case, _case)]
    else:
        steps = [(rates.area_typo, _typo), (rates.area_typo, _variant), (rates.case, _case)]
    for rate, fn in steps:
        if rng.random() < rate:
            out = fn(rng, out)
    return out.strip() or name


def _move(rng: random.Random, pt: Any) -> Any:
    dist = 10.0 * 200.0 ** rng.random()  # 10 m .. 2 km, log-uniform
    bearing = rng.random() * 2 * math.pi
    dlat = dist * math.cos(bearing) / 110_574.0
    dlon = dist * math.sin(bearing) / (111_320.0 * math.cos(math.radians(pt.y)))
    return shapely.Point(pt.x + dlon, pt.y + dlat)


# --- the derivation ------------------------------------------------------------------------


def derive(tree: str, seed: int = 1, rates: Rates | None = None) -> Damaged:
    rates = rates or Rates()
    rng = random.Random(seed)
    units, types = TREES[tree]()
    by_ref = {u.source_ref: u for u in units}
    children: dict[str | None, list[UnitRecord]] = defaultdict(list)
    for u in units:
        children[u.parent_ref].append(u)
    depth: dict[str, int] = {}
    for u in units:  # parents come first in both readers' order? compute robustly
        chain, p = 0, u
        while p.parent_ref is not None and p.parent_ref in by_ref:
            chain += 1
            p = by_ref[p.parent_ref]
        depth[str(u.source_ref)] = chain
    max_depth = max(depth.values())
    leaves = [u for u in units if depth[str(u.source_ref)] == max_depth]
    leaf_refs = {u.source_ref for u in leaves}

    def centroid(ref: str | None) -> Any:
        u = by_ref.get(ref) if ref else None
        if u is None:
            return None
        if u.territory is not None:
            return u.territory.centroid
        pts = [c.location for c in children[ref] if c.location is not None]
        return shapely.MultiPoint(pts).centroid if pts else None

    order = list(leaves)
    rng.shuffle(order)
    n = len(order)
    cut = [0]
    for r in (rates.one_side_only / 2, rates.one_side_only / 2, rates.split, rates.merge,
              rates.neighbour_parent):
        cut.append(cut[-1] + int(round(n * r)))
    left_only = {u.source_ref for u in order[cut[0]:cut[1]]}
    right_only = {u.source_ref for u in order[cut[1]:cut[2]]}
    split = {u.source_ref for u in order[cut[2]:cut[3]]}
    merge_heads = [u for u in order[cut[3]:cut[4]]]
    moved = {u.source_ref for u in order[cut[4]:cut[5]]}
    used = left_only | right_only | split | moved | {u.source_ref for u in merge_heads}
    merged_into: dict[str, str] = {}  # partner ref -> head ref
    for head in merge_heads:
        sibs = [s for s in children[head.parent_ref] if s.source_ref in leaf_refs
                and s.source_ref not in used and s.source_ref not in merged_into]
        if not sibs:
            continue
        if head.location is not None:
            located = [s for s in sibs if s.location is not None]
            if located:
                here = head.location
                sibs = sorted(located, key=lambda s: here.distance(s.location))[:3]
        mate = rng.choice(sibs)
        merged_into[str(mate.source_ref)] = str(head.source_ref)
        used.add(mate.source_ref)
    heads = set(merged_into.values())

    def neighbour_parent(ref: str | None) -> str | None:
        p = by_ref.get(ref) if ref else None
        if p is None:
            return ref
        sibs = [s for s in children[p.parent_ref] if s.source_ref != ref]
        c = centroid(ref)
        if not sibs:
            return ref
        if c is not None:
            scored = [(centroid(s.source_ref), s) for s in sibs]
            scored = [(cc.distance(c), s) for cc, s in scored if cc is not None]
            if scored:
                return str(min(scored, key=lambda t: t[0])[1].source_ref)
        return str(rng.choice(sibs).source_ref)

    used_ids: set[str] = set()

    def new_id() -> str:  # opaque, like a survey tool's own ids
        while True:
            x = "S" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
            if x not in used_ids:
                used_ids.add(x)
                return x

    rid = {str(u.source_ref): new_id() for u in units}
    code_order = [str(u.source_ref) for u in units]
    rng.shuffle(code_order)
    left_code = {ref: f"MOH-{k + 1:05d}" for k, ref in enumerate(code_order)
                 if rng.random() < rates.left_code}
    own_codes = iter(rng.sample(range(10_000, 99_999), len(units) * 2))

    def right_code(ref: str) -> str | None:
        x = rng.random()
        if x < rates.code_own:
            return f"SRV{next(own_codes)}"
        x -= rates.code_own
        if x < rates.code_same:
            return left_code.get(ref)
        x -= rates.code_same
        if x < rates.code_wrong:
            u = by_ref[ref]
            others = [str(s.source_ref) for s in children[u.parent_ref]
                      if s.source_ref != ref and str(s.source_ref) in left_code]
            return left_code[rng.choice(others)] if others else None
        return None

    left: list[UnitRecord] = []
    right: list[UnitRecord] = []
    truth: set[tuple[str, str]] = set()
    kinds: dict[tuple[str, str], str] = {}
    for u in units:
        ref = str(u.source_ref)
        is_leaf = ref in leaf_refs
        if ref not in right_only:
            left.append(replace(u, code=left_code.get(ref)))
        if ref in left_only or ref in merged_into:
            if ref in merged_into:
                pair = (ref, rid[merged_into[ref]])
                truth.add(pair)
                kinds[pair] = "merge"
            continue
        if depth[ref] == 0:  # both lists agree on the country's name (but for case): a
            # misspelt root would make any top-down exact matcher (Iaso's) link nothing
            name = _case(rng, u.name) if rng.random() < rates.case else u.name
        else:
            name = damage_name(rng, u.name, rates, is_leaf)
        if ref in heads and rng.random() < 0.5:
            partner_ref = next(p for p, h in merged_into.items() if h == ref)
            name = f"{name} / {by_ref[partner_ref].name}"
        parent = rid[u.parent_ref] if u.parent_ref else None
        if ref in moved:
            np_ref = neighbour_parent(u.parent_ref)
            parent = rid[np_ref] if np_ref else parent
        loc, terr = u.location, u.territory
        if is_leaf and loc is not None:
            loc = None if rng.random() < rates.no_coordinates else _move(rng, loc)
        if terr is not None:
            terr = (None if rng.random() < rates.no_coordinates
                    else shapely.simplify(terr, 0.003, preserve_topology=True))
        rec = replace(u, source_ref=rid[ref], parent_ref=parent, name=name, location=loc,
                      territory=terr, uuid=None, code=right_code(ref), extra_fields=None)
        right.append(rec)
        if ref not in right_only:
            pair = (ref, rid[ref])
            truth.add(pair)
            if ref in split:
                kinds[pair] = "split"
            elif ref in heads:
                kinds[pair] = "merge"
        if ref in split:
            extra_name = f"{damage_name(rng, u.name, rates, True)} {rng.choice(_SPLIT_SUFFIX)}"
            extra_loc = None
            if u.location is not None and rng.random() >= rates.no_coordinates:
                extra_loc = _move(rng, u.location)
            extra_ref = new_id()
            right.append(replace(u, source_ref=extra_ref, parent_ref=parent,
                                 name=extra_name, location=extra_loc, territory=None,
                                 uuid=None, code=right_code(ref), extra_fields=None))
            pair = (ref, extra_ref)
            truth.add(pair)
            kinds[pair] = "split"
    # shuffled within each depth: parents still come before their children
    depth_of = {rid[r]: d for r, d in depth.items()}
    rng.shuffle(right)
    right.sort(key=lambda r: depth_of.get(str(r.source_ref), max_depth))
    origin = {r: ref for ref, r in rid.items()}
    origin.update({b: a for (a, b), k in kinds.items() if k == "split" and b not in origin})
    lc = {u.source_ref: u.code for u in left}
    rc = {u.source_ref: u.code for u in right}
    code_agree = sum(1 for a, b in truth if lc.get(a) and lc.get(a) == rc.get(b))
    code_clash = sum(1 for a, b in truth if lc.get(a) and rc.get(b) and lc[a] != rc[b])
    ln = {u.source_ref: u.name for u in left}
    rn = {u.source_ref: u.name for u in right}
    same_name = sum(1 for a, b in truth if a in leaf_refs and ln[a].lower() == rn[b].lower())
    leaf_pairs = sum(1 for a, _ in truth if a in leaf_refs)
    stats = {"units": len(units), "leaves": n, "left": len(left), "right": len(right),
             "truth_pairs": len(truth), "left_only": len(left_only),
             "right_only": len(right_only), "split": len(split), "merged": len(merged_into),
             "neighbour_parent": len(moved), "truth_code_agree": code_agree,
             "truth_code_differ": code_clash, "truth_leaf_pairs": leaf_pairs,
             "truth_leaf_same_name_lowercase": same_name}
    areas = {str(u.source_ref) for u in units if u.source_ref not in leaf_refs}
    return Damaged(tree, types, left, right, truth, kinds, stats, origin, areas)


if __name__ == "__main__":
    import sys

    d = derive(sys.argv[1] if len(sys.argv) > 1 else "sierra-leone")
    print(d.stats)
    rng = random.Random(0)
    lefts = {u.source_ref: u for u in d.left}
    for u in rng.sample(d.right, 25):
        orig = lefts.get(d.origin.get(str(u.source_ref), ""))
        print(f"{orig.name if orig else '-':40} -> {u.name}")
