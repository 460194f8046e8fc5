"""DHIS2 push benchmark: HTTP requests (and time) to push 1,000 new units, against the fake
DHIS2 of the tests (``tests/fake_dhis2.py``, 2.41, on 127.0.0.1), in the same run as a
one-request-per-unit push (what Iaso does: a POST per new unit, then the groups).

The Sierra Leone demo (1,332 units) is imported into a GeoPackage registry and 1,000 new
facilities without DHIS2 uids are added to its draft, spread over four chiefdoms, all in
one group.  Then, each against a fresh fake:

a) ``sync.dhis2_sync.push`` — the whole push, as ``georeg dhis2 push`` runs it: reads
   DHIS2's state, works out the differences, stores the new uids, sends the units through
   ``/api/metadata`` in batches of 500 and the changed group in one more import.
b) the per-unit baseline: the same new units, each in its own ``POST /api/metadata``
   (parents exist already), then the group once — one request per unit, as Iaso does.

Goal: (a) <= 10 HTTP requests.  Both runs must leave the fake with all 2,332 units.

    .venv/bin/python benchmarks/bench_dhis2_push.py [--units 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

GOAL_REQUESTS = 10
CHIEFDOMS = ["YuQRtpLP10I", "U6Kr7Gtpidn", "vWbkYPRmKyS", "dGheVylzol6"]
CHP_GROUP = "uYxK4wmcPqA"


def build_registry(path: Path, units: int) -> None:
    from shapely.geometry import Point
    from sqlalchemy import text

    from storage.bulk import UnitRecord
    from storage.registry import Registry
    from sync.dhis2_json import import_dhis2_files
    from sync.exchange import ImportPayload
    from sync.importing import ImportJob
    from tests.conftest import DEMO_FILES

    with Registry.create(path, overwrite=True) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        records = [UnitRecord(name=f"Bulk CHP {i:04d}", source_ref=f"tmp{i}",
                              parent_ref=CHIEFDOMS[i % len(CHIEFDOMS)], type_name="Facility",
                              location=Point(-11.5 + i / 10000, 7.9), groups=[CHP_GROUP],
                              where=f"row {i}") for i in range(units)]
        ImportJob(reg, ImportPayload(units=records), source="SL", number=1).run()
        with reg.write() as conn:
            conn.execute(text("UPDATE org_unit SET source_ref = NULL "
                              "WHERE source_ref LIKE 'tmp%'"))


def georeg_push(path: Path) -> dict[str, Any]:
    from storage.registry import Registry
    from sync.dhis2_client import Dhis2Client
    from sync.dhis2_sync import push
    from tests.fake_dhis2 import FakeDhis2

    with FakeDhis2("2.41") as fake, Registry.open(path) as reg:
        client = Dhis2Client(fake.url, username="admin", password="district")
        started = time.perf_counter()
        report = push(reg, client, "SL", 1)
        seconds = time.perf_counter() - started
        return {"requests": len(fake.requests), "client_requests": report["requests"],
                "seconds": seconds, "units_in_dhis2": len(fake.state.units),
                "created": report["planned"]["create"]}


def per_unit_push(path: Path) -> dict[str, Any]:
    """One POST per new unit, then the group: the shape of Iaso's export."""
    from storage.registry import Registry
    from sync.dhis2_client import Dhis2Client, generate_uid
    from sync.exchange import read_version
    from tests.fake_dhis2 import FakeDhis2

    with Registry.open(path) as reg:
        units = [u for u in read_version(reg, "SL", 1).units if not u.source_ref]
        refs = {u.ref: u.source_ref for u in read_version(reg, "SL", 1).units}
    with FakeDhis2("2.41") as fake:
        client = Dhis2Client(fake.url, username="admin", password="district")
        started = time.perf_counter()
        created = []
        for u in units:
            uid = generate_uid()
            parent = refs.get(u.parent_ref) if u.parent_ref else None
            obj = {"id": uid, "name": u.name, "shortName": u.name[:50],
                   "openingDate": u.opening_date or "1970-01-01", "parent": {"id": parent}}
            if u.location is not None:
                obj["geometry"] = {"type": "Point", "coordinates": [u.location.x, u.location.y]}
            result = client.import_metadata({"organisationUnits": [obj]})
            assert result.ok, result.to_dict()
            created.append(uid)
        group = client.get(f"organisationUnitGroups/{CHP_GROUP}", {"fields": ":owner"})
        group["organisationUnits"] += [{"id": uid} for uid in created]
        assert client.put_object(f"organisationUnitGroups/{CHP_GROUP}", group).ok
        seconds = time.perf_counter() - started
        return {"requests": len(fake.requests), "seconds": seconds,
                "units_in_dhis2": len(fake.state.units), "created": len(created)}


def run(units: int, out: Path) -> dict[str, Any]:
    print(f"== DHIS2 push of {units:,} new units (fake DHIS2 2.41 on 127.0.0.1)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sl.gpkg"
        build_registry(path, units)
        base = per_unit_push(path)  # first: georeg's push stores the new uids in the registry
        ours = georeg_push(path)
    assert ours["created"] == units and ours["units_in_dhis2"] == 1332 + units, ours
    assert base["units_in_dhis2"] == 1332 + units, base
    met = ours["requests"] <= GOAL_REQUESTS
    print(c.table(["push", "HTTP requests", "seconds", "units in DHIS2 after"], [
        ["georeg (sync.dhis2_sync.push)", ours["requests"], ours["seconds"],
         ours["units_in_dhis2"]],
        ["one request per unit (Iaso's way)", base["requests"], base["seconds"],
         base["units_in_dhis2"]],
    ]))
    ratio = ours["requests"] / base["requests"]
    print(f"requests: {ours['requests']} (goal <= {GOAL_REQUESTS}: {'met' if met else 'NOT met'})"
          f"; {ratio:.3f}x the per-unit push; time {ours['seconds'] / base['seconds']:.2f}x")
    result = {"units": units, "ours": ours, "per_unit": base, "goal": GOAL_REQUESTS,
              "met": met, "ratio": ratio}
    c.save_result(out, f"dhis2-push-{units}", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=c.DEFAULT_OUT)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(c.ROOT))
    result = run(args.units, args.out)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
