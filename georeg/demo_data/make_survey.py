"""Make ``survey.csv``: a field survey of the Sierra Leone demo's facilities.

docs/compare-and-merge.md needs a second list of the same places to match and
merge with the demo registry, one that differs from it the way a real survey
differs from a ministry list.  This script derives it from the bundled DHIS2
responses in ``sierra-leone/`` (the same data ``georeg demo`` loads), so the
guide's commands and outputs can be rerun and checked by anyone:

- its own refs (``SRV00000`` …): the survey shares no identifier with DHIS2;
- about half of the "… MCHP" names spelt out as "… Maternal Child Health Post";
- every point moved by up to ~330 m (0.003°) in each direction;
- 40 facilities missing (the team did not reach them);
- one facility under its local name (``LOCAL_NAMES``);
- 2 new facilities, only in the survey (half-way between two facilities of
  the same chiefdom);
- a ``beds`` count for each facility (a field the ministry list does not have).

Districts and chiefdoms keep their names and have no geometry.

It uses only the standard library and a fixed seed, and walks the units in a
fixed order (the tree, by name), so the output is the same byte for byte on
every run and machine.  Run it from anywhere::

    python georeg/demo_data/make_survey.py            # rewrites survey.csv beside it
    python georeg/demo_data/make_survey.py --check    # exit 1 if survey.csv differs
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DHIS2 = HERE / "sierra-leone"
OUT = HERE / "survey.csv"
SEED = 2026
DROPPED = 40
JITTER = 0.003  # degrees; ~330 m north-south at Sierra Leone's latitude
TYPES = {1: "National", 2: "District", 3: "Chiefdom", 4: "Facility"}
# A facility the team recorded under its local name (the matcher cannot tell; the
# reviewer can, which is what `georeg link relink` is for in the guide).
LOCAL_NAMES = {"l0WRLZlEgB1": "Kakajama Junction MCHP"}  # Gbo-Kakajama 2 MCHP
FIELDS = ["ref", "name", "type", "level", "parent_ref", "latitude", "longitude", "beds"]


def load_units() -> list[dict]:
    """The DHIS2 org units of both response pages, in tree order by name."""
    units: list[dict] = []
    for page in sorted(DHIS2.glob("organisationUnits-page*.json")):
        units += json.loads(page.read_text(encoding="utf-8"))["organisationUnits"]
    by_id = {u["id"]: u for u in units}

    def key(u: dict) -> tuple:
        # Names along the path, then the uid to break ties between equal names.
        return tuple((by_id[i]["name"], i) for i in u["path"].strip("/").split("/"))

    return sorted(units, key=key)


def make_rows() -> list[dict]:
    rng = random.Random(SEED)
    units = load_units()
    srv = {u["id"]: f"SRV{i:05d}" for i, u in enumerate(units)}
    facilities = [u for u in units if u["level"] == 4]
    dropped = {u["id"] for u in rng.sample(
        [u for u in facilities if u["id"] not in LOCAL_NAMES], DROPPED)}

    rows: list[dict] = []
    for u in units:
        if u["id"] in dropped:
            continue
        name = LOCAL_NAMES.get(u["id"], u["name"])
        if name.endswith(" MCHP") and rng.random() < 0.5:
            name = name[: -len(" MCHP")] + " Maternal Child Health Post"
        lat = lon = ""
        geometry = u.get("geometry") or {}
        if u["level"] == 4 and geometry.get("type") == "Point":
            x, y = geometry["coordinates"][:2]
            lat = f"{y + rng.uniform(-JITTER, JITTER):.6f}"
            lon = f"{x + rng.uniform(-JITTER, JITTER):.6f}"
        parent = u["path"].strip("/").split("/")[-2] if u["level"] > 1 else ""
        rows.append({"ref": srv[u["id"]], "name": name, "type": TYPES[u["level"]],
                     "level": u["level"], "parent_ref": srv.get(parent, ""),
                     "latitude": lat, "longitude": lon,
                     "beds": rng.randint(0, 30) if u["level"] == 4 else ""})

    # New facilities: chiefdoms with at least two surveyed points, the new one
    # half-way between the first two (inside the chiefdom unless it is very
    # concave).
    pointed: dict[str, list[dict]] = {}
    for r in rows:
        if r["level"] == 4 and r["latitude"]:
            pointed.setdefault(r["parent_ref"], []).append(r)
    chiefdoms = {r["ref"]: r for r in rows if r["level"] == 3}
    candidates = sorted(ref for ref, rs in pointed.items() if len(rs) >= 2)
    next_ref = len(units)
    for ref in rng.sample(candidates, 2):
        a, b = pointed[ref][:2]
        rows.append({"ref": f"SRV{next_ref:05d}",
                     "name": f"{chiefdoms[ref]['name']} New MCHP", "type": "Facility",
                     "level": 4, "parent_ref": ref,
                     "latitude": f"{(float(a['latitude']) + float(b['latitude'])) / 2:.6f}",
                     "longitude": f"{(float(a['longitude']) + float(b['longitude'])) / 2:.6f}",
                     "beds": rng.randint(0, 30)})
        next_ref += 1
    return rows


def render(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    text = render(make_rows())
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT.name}: {'up to date' if same else 'differs from make_survey.py output'}")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"Wrote {OUT} ({text.count(chr(10)) - 1} rows).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
