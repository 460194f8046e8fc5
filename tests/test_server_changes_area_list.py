"""``GET /api/v1/changes`` lists for a user limited to an area exactly the change
requests that user may open, over real HTTP to ``georeg serve`` on 127.0.0.1.

From the security audit: the list showed requests that then answered 403 when opened
(a move into a parent outside the area, or a request whose unit or parent is outside
the area in the draft an approval writes to).  The list is filtered before paging, so its
``count`` and its pages describe the same requests; the tests compare it, request by
request, with what ``GET /api/v1/changes/{id}`` answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import text

from local_server import users
from storage import change_requests as cr
from storage import units
from storage.registry import Registry
from tests import server_helpers as sh
from tests.openrosa_helpers import thread_server

WESTERN_AREA = sh.WESTERN_AREA
BOMBALI = "fdc6uOvgoji"


class Live:
    def __init__(self, base: str, registry: Registry, passwords: dict[str, str]) -> None:
        self.base, self.registry, self.passwords = base, registry, passwords
        self.tokens: dict[str, dict[str, str]] = {}

    def auth(self, user: str) -> dict[str, str]:
        if user not in self.tokens:
            r = requests.post(f"{self.base}/api/token/", timeout=30,
                              json={"username": user, "password": self.passwords[user]})
            assert r.status_code == 200, r.text
            self.tokens[user] = {"Authorization": f"Bearer {r.json()['access']}"}
        return self.tokens[user]

    def get(self, user: str, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.base}{path}", params=params, headers=self.auth(user),
                            timeout=60)


def _one(reg: Registry, sql: str, **params: Any) -> Any:
    with reg.read() as conn:
        return conn.execute(text(sql), params).scalar()


def _children(reg: Registry, ref: str, version: int = 1) -> list[str]:
    with reg.read() as conn:
        return [str(r[0]) for r in conn.execute(text(
            "SELECT c.source_ref FROM org_unit c JOIN org_unit d ON d.version_id = c.version_id "
            "AND d.unit_key = c.parent_key WHERE c.version_id = :v AND d.source_ref = :r "
            "ORDER BY c.path"), {"v": version, "r": ref})]


def _facilities(reg: Registry, district: str) -> list[str]:
    path = _one(reg, "SELECT path FROM org_unit WHERE version_id = 1 AND source_ref = :r",
                r=district)
    with reg.read() as conn:
        return [str(r[0]) for r in conn.execute(text(
            "SELECT source_ref FROM org_unit WHERE version_id = 1 AND path LIKE :p AND "
            "depth = 4 ORDER BY path"), {"p": path + "%"})]


def _make_requests(reg: Registry) -> dict[str, int]:
    """Requests of every shape the area rule distinguishes (v1 is published and the
    default, v2 the draft approvals write to); name → request id."""
    wa_chiefdoms, bo_chiefdoms = _children(reg, WESTERN_AREA), _children(reg, BOMBALI)
    wa, bo = _facilities(reg, WESTERN_AREA), _facilities(reg, BOMBALI)
    made: dict[str, int] = {}

    def add(name: str, **kw: Any) -> dict[str, Any]:
        data = cr.create_change_request(reg, "SL", created_by="kofi", **kw)
        made[name] = int(data["id"])
        return data

    add("rename inside", unit=wa[0], values={"name": "Renamed inside"})
    add("rename outside", unit=bo[0], values={"name": "Renamed outside"})
    add("move out of the area", unit=wa[1], values={"parent": bo_chiefdoms[0]})
    add("move to the top level", unit=wa[2], values={"parent": None})
    add("move into the area", unit=bo[1], values={"parent": wa_chiefdoms[0]})
    add("move inside", unit=wa[3], values={"parent": WESTERN_AREA})
    add("move inside, parent unchanged", unit=wa[4],
        values={"parent": _one(reg, "SELECT p.source_ref FROM org_unit u JOIN org_unit p ON "
                                    "p.version_id = u.version_id AND p.unit_key = u.parent_key "
                                    "WHERE u.version_id = 1 AND u.source_ref = :r", r=wa[4]),
                "name": "Same parent"})
    village = str(uuid.uuid4())
    add("new unit inside", new_unit_uuid=village,
        values={"name": "New village", "parent": wa_chiefdoms[0]})
    add("new unit under a new unit inside", values={"name": "New CHP", "parent": village})
    add("correction of a new unit inside", unit=village, values={"name": "New village 2"})
    far = str(uuid.uuid4())
    add("new unit outside", new_unit_uuid=far,
        values={"name": "Far village", "parent": bo_chiefdoms[0]})
    add("new unit under a new unit outside", values={"name": "Far CHP", "parent": far})
    add("new unit at the top level", values={"name": "New district"})
    add("rename inside, on the draft", unit=wa[5], number=2, values={"name": "Draft rename"})
    add("move out, on the draft", unit=wa[6], number=2, values={"parent": bo_chiefdoms[1]})
    # the draft has changed since these arrived on v1
    add("rename of a unit moved out in the draft", unit=wa[7], values={"name": "Moved away"})
    units.move_unit(reg, "SL", wa[7], bo_chiefdoms[0], number=2)
    left = [c for c in wa_chiefdoms if c != wa_chiefdoms[0]][0]
    add("move under a parent moved out in the draft", unit=wa[8], values={"parent": left})
    units.move_unit(reg, "SL", left, BOMBALI, number=2)
    add("rename of a unit deleted from the draft", unit=wa[9], values={"name": "Deleted there"})
    units.delete_unit(reg, "SL", wa[9], number=2)
    # reviewed requests: only the version they were made on counts
    done = add("rename, rejected, of a unit moved out in the draft since", unit=wa[10],
               values={"name": "Refused name"})
    cr.reject_change_request(reg, done["id"], reviewer="kofi", comment="no")
    units.move_unit(reg, "SL", wa[10], bo_chiefdoms[2], number=2)
    done = add("move out, rejected", unit=wa[19], values={"parent": bo_chiefdoms[2]})
    cr.reject_change_request(reg, done["id"], reviewer="kofi", comment="no")
    done = add("rename inside, approved", unit=wa[11], values={"name": "Approved name"})
    cr.approve_change_request(reg, done["id"], reviewer="kofi")
    for i in range(7):  # enough to page through
        add(f"rename inside {i}", unit=wa[20 + i], values={"name": f"Renamed {i}"})
    return made


@pytest.fixture(scope="module", params=["gpkg", pytest.param("postgis", marks=pytest.mark.postgis)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Live, dict[str, int]]]:
    """The demo registry of ``server_helpers`` with rita, a reviewer limited to Western
    Area, and the requests of :func:`_make_requests`; on a file and on PostgreSQL."""
    tmp = tmp_path_factory.mktemp("changes-list")
    location: Any = tmp / "registry.gpkg"
    if request.param == "postgis":
        location = (f"{request.getfixturevalue('postgis_url')}"
                    f"?schema=cl_{uuid.uuid4().hex[:10]}")
    reg, passwords = sh.build_demo_registry(location)
    passwords["rita"] = uuid.uuid4().hex
    users.add_user(reg, "rita", passwords["rita"], role="reviewer", roots=[WESTERN_AREA])
    try:
        made = _make_requests(reg)
        with thread_server(location) as base:
            yield Live(base, reg, passwords), made
    finally:
        reg.close()


def _listed(live: Live, user: str, limit: int, **params: Any) -> tuple[list[int], int]:
    """Every page of the list: the ids in order, and the count the first page gave."""
    ids: list[int] = []
    page, count = 1, None
    while True:
        r = live.get(user, "/api/v1/changes", page=page, limit=limit, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        count = body["count"] if count is None else count
        assert body["count"] == count and body["pages"] == max(1, -(-count // limit))
        assert len(body["change_requests"]) == (min(limit, count - (page - 1) * limit))
        ids += [c["id"] for c in body["change_requests"]]
        if not body["has_next"]:
            return ids, count
        page += 1


def test_a_restricted_user_lists_exactly_what_they_may_open(
        live: tuple[Live, dict[str, int]]) -> None:
    server, made = live
    opens = {rid: server.get("rita", f"/api/v1/changes/{rid}").status_code
             for rid in made.values()}
    assert set(opens.values()) <= {200, 403, 404}, opens
    visible = sorted((rid for rid, code in opens.items() if code == 200), reverse=True)
    names = {rid: name for name, rid in made.items()}
    # the shapes the rule must tell apart (so this test keeps testing what it says)
    assert {names[r] for r, c in opens.items() if c == 403} >= {
        "move out of the area", "move to the top level", "move out, on the draft",
        "rename of a unit moved out in the draft",
        "move under a parent moved out in the draft", "move out, rejected"}
    assert {names[r] for r in visible} >= {
        "new unit under a new unit inside", "correction of a new unit inside",
        "rename of a unit deleted from the draft",
        "rename, rejected, of a unit moved out in the draft since",
        "move inside, parent unchanged", "move inside"}

    for limit in (1, 4, 100):
        ids, count = _listed(server, "rita", limit)
        assert ids == visible, {names[i] for i in set(ids) ^ set(visible)}
        assert count == len(visible)
    ids, count = _listed(server, "rita", 3, status="new")
    assert ids == [r for r in visible if names[r] not in (
        "rename, rejected, of a unit moved out in the draft since",
        "rename inside, approved")] and count == len(ids)
    ids, _ = _listed(server, "rita", 5, kind="creation")
    assert {names[i] for i in ids} == {"new unit inside", "new unit under a new unit inside"}


def test_an_unrestricted_user_lists_every_request(live: tuple[Live, dict[str, int]]) -> None:
    server, made = live
    ids, count = _listed(server, "kofi", 6)
    assert ids == sorted(made.values(), reverse=True) and count == len(made)


def test_the_review_page_lists_what_the_api_lists(live: tuple[Live, dict[str, int]]) -> None:
    """The reviewer's web page (/changes) shows rita the same requests as the API: none
    that would answer 403 when she clicks it."""
    import re

    server, made = live
    s = requests.Session()
    r = s.post(f"{server.base}/login", timeout=30, allow_redirects=False,
               data={"username": "rita", "password": server.passwords["rita"]})
    assert r.status_code in (302, 303), r.text
    page = s.get(f"{server.base}/changes", params={"status": "all"}, timeout=60)
    assert page.status_code == 200, page.text
    shown = {int(i) for i in re.findall(r'href="/changes/(\d+)"', page.text)}
    listed, _ = _listed(server, "rita", 100)
    assert shown == set(listed) and shown, shown ^ set(listed)
    for rid in shown:
        assert s.get(f"{server.base}/changes/{rid}", timeout=60).status_code == 200
