"""``MatchJob``: match two versions and store the run, with progress and cancel."""

from __future__ import annotations

import os
import time
from typing import Any

from storage.errors import InvalidInput
from storage.jobs import Job
from storage.matching.config import MatchConfig
from storage.matching.engine import MatchResult, match_sides
from storage.matching.normalise import Normaliser
from storage.matching.side import Side, load_side
from storage.matching.store import ALGORITHM, earlier_decisions, now_iso, write_run
from storage.registry import Registry
from storage.versions import VersionRef, resolve_version


def parse_side(spec: str) -> tuple[str, int | None]:
    """``source[:version]`` → (source, number or None for the default/newest)."""
    spec = (spec or "").strip()
    if not spec:
        raise InvalidInput("A side to match is empty; write it as SOURCE or SOURCE:VERSION.")
    source, sep, number = spec.rpartition(":")
    if sep and number.strip().isdigit() and source.strip():
        return source.strip(), int(number)
    if sep and source.strip() and not number.strip():
        raise InvalidInput(f"{spec!r}: the version after ':' is missing (SOURCE:VERSION).")
    return spec, None


class MatchJob(Job[dict[str, Any]]):
    """Match LEFT against RIGHT; store an ``algorithm_run`` and its ``link`` rows."""

    title = "Matching"

    def __init__(self, reg: Registry, left: str, right: str, *,
                 config: MatchConfig | None = None, author: str | None = None,
                 origin: str = "api", store: bool = True, workers: int | None = None) -> None:
        super().__init__()
        self.reg, self.left_spec, self.right_spec = reg, left, right
        self.config = config or MatchConfig()
        self.config.check()
        self.author, self.origin, self.store = author, origin, store
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.sides: tuple[Side, Side] | None = None
        self.result: MatchResult | None = None

    def execute(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        norm = Normaliser(self.config)
        with self.reg.read() as conn:
            started = now_iso(conn)
            lv = resolve_version(conn, *parse_side(self.left_spec))
            rv = resolve_version(conn, *parse_side(self.right_spec))
            if lv.id == rv.id:
                raise InvalidInput(
                    f"LEFT and RIGHT are the same version ({lv.label}): a list matches itself "
                    "trivially. Name two different sources (or two versions), e.g. "
                    f"'georeg match REG \"{lv.source}:{lv.number}\" OTHER_SOURCE'."
                )
            self.report(0, None, "Reading units")
            left = load_side(conn, self.reg.backend, lv, label="LEFT")
            right = load_side(conn, self.reg.backend, rv, label="RIGHT")
            self.check_cancelled()
            left.prepare(norm)
            right.prepare(norm)
            decisions, dropped = earlier_decisions(conn, left, right)
        t_load = time.perf_counter() - t0

        def progress(done: int, total: int, message: str) -> None:
            self.report(done, total, message)

        result = match_sides(left, right, self.config, decisions=decisions, progress=progress,
                             workers=self.workers)
        result.decisions_dropped = dropped
        self.sides, self.result = (left, right), result
        t_match = time.perf_counter() - t0 - t_load
        self.check_cancelled()
        summary = _summary(lv, rv, left, right, result, len(decisions))
        metrics = {**summary["counts"], "levels": result.levels,
                   "decisions_carried": len(decisions), "decisions_not_applicable": dropped,
                   "seconds": {"load": round(t_load, 3), "match": round(t_match, 3)}}
        params = {"algorithm": ALGORITHM, "left": lv.to_dict(), "right": rv.to_dict(),
                  **self.config.to_dict()}
        run_id = None
        if self.store:
            self.report(None, None, "Storing links")
            with self.reg.write(origin=self.origin, author=self.author) as conn:
                run_id = write_run(conn, left, right, result, parameters=params,
                                   metrics=metrics, author=self.author, started_at=started)
        summary["run"] = run_id
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["levels"] = [{k: v for k, v in lvl.items() if k != "model"}
                             for lvl in result.levels]
        return summary


def _summary(lv: VersionRef, rv: VersionRef, left: Side, right: Side, result: MatchResult,
             carried: int) -> dict[str, Any]:
    counts = {s: 0 for s in ("auto", "review", "accepted", "rejected")}
    kinds = {"one_to_one": 0, "split": 0, "merge": 0}
    for lk in result.links:
        counts[lk.status] += 1
        if lk.status != "rejected":
            kinds[lk.kind] += 1
    return {
        "left": lv.to_dict(), "right": rv.to_dict(),
        "left_units": len(left), "right_units": len(right),
        "counts": {"links": len(result.links), **counts, "kinds": kinds,
                   "unmatched_left": len(result.unmatched_left),
                   "unmatched_right": len(result.unmatched_right)},
        "decisions_carried": carried,
    }


def match_versions(reg: Registry, left: str, right: str, **kw: Any) -> dict[str, Any]:
    """Convenience for scripts and tests: run the match job synchronously."""
    return MatchJob(reg, left, right, **kw).run()
