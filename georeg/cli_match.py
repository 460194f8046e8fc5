"""``georeg match``, ``georeg links`` and ``georeg link accept|reject|relink``."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click

from georeg.cli import ORIGIN, command, emit, open_registry, run_job

REG = click.argument("reg", metavar="REG")


def _whoami() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not an error
        return None


def _check_out(out: str) -> bool:
    """Make sure OUT (and the unmatched lists beside it) can be written *before* the run is
    stored, so a bad path fails with the registry unchanged.  True when OUT was created."""
    from storage.errors import InvalidInput

    path = Path(out)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for p in (path, path.with_name(f"{path.stem}.unmatched-left{path.suffix or '.csv'}")):
            with p.open("a", encoding="utf-8"):
                pass
            if p != path and p.stat().st_size == 0:
                p.unlink()
    except OSError as exc:
        import errno

        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = "a file stands where a folder is needed"
        raise InvalidInput(f"Cannot write the links to {out}: {reason} "
                           f"({exc.filename or path.parent}). Choose another --out.") from exc
    return not existed


def _match_text(d: dict[str, Any]) -> str:
    c = d["counts"]
    lines = [
        f"Run {d['run']}: {d['left']['label']} ({d['left_units']} units) ↔ "
        f"{d['right']['label']} ({d['right_units']} units) in {d['seconds']} s.",
        f"  {c['auto']} auto, {c['review']} to review, {c['accepted']} accepted and "
        f"{c['rejected']} rejected earlier; splits {c['kinds']['split']}, merges "
        f"{c['kinds']['merge']} (links).",
        f"  Unmatched: {c['unmatched_left']} left, {c['unmatched_right']} right.",
    ]
    if d.get("decisions_carried"):
        lines.append(f"  {d['decisions_carried']} earlier decision(s) kept.")
    for f in d.get("files", {}).values():
        lines.append(f"  Wrote {f}")
    lines.append(f"Next: georeg links REG --run {d['run']} --status review")
    return "\n".join(lines)


_top = click.Group()  # holds the top-level commands until georeg.cli registers them


@command(_top, "match")
@REG
@click.argument("left", metavar="LEFT")
@click.argument("right", metavar="RIGHT")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the links as CSV (left_ref,right_ref,score,status,evidence) and the "
              "unmatched units beside it (OUT stem + .unmatched-left/-right.csv).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="TOML file with thresholds, blocking and name lists (docs/matching.md).")
def match_cmd(reg: str, left: str, right: str, out: str | None, config_file: str | None,
              as_json: bool) -> None:
    """Match the units of LEFT and RIGHT (each SOURCE or SOURCE:VERSION) and store the links.

    Parents first, level by level; names, distance, parents, types and codes are
    combined into a score (about the probability of "same place"). Links are 'auto'
    (sure), 'review' (a person decides) or not made; decisions from earlier runs on
    the same two sources are kept.
    """
    _run_match(reg, left, right, out, config_file, as_json)


def _run_match(reg: str, left: str, right: str, out: str | None, config_file: str | None,
               as_json: bool) -> None:
    from storage.matching.config import load_config
    from storage.matching.job import MatchJob
    from storage.matching.review import write_csv

    cfg = load_config(config_file)
    with open_registry(reg) as registry:
        created = _check_out(out) if out else False
        try:
            job = MatchJob(registry, left, right, config=cfg, author=_whoami(), origin=ORIGIN)
            result = run_job(job, as_json)
        except BaseException:
            if out and created:
                Path(out).unlink(missing_ok=True)
            raise
        if out:
            result["files"] = write_csv(registry, result["run"], out)
    emit(as_json, result, _match_text)


def _links_text(d: dict[str, Any]) -> str:
    lines = [f"Run {d['run']}: {d['left']['label']} ↔ {d['right']['label']}, "
             f"{len(d['links'])} link(s) shown."]
    for lk in d["links"]:
        ev = lk["evidence"]
        dist = ev.get("distance_m")
        why = ", ".join(x for x in (
            f"name {ev['name_similarity']:.2f}" if "name_similarity" in ev else "",
            f"{dist:.0f} m" if isinstance(dist, (int, float)) else "",
            f"parent {ev['parent']}" if "parent" in ev else "",
            f"type {ev['type']}" if "type" in ev else "",
        ) if x)
        score = f"{lk['score']:.3f}" if lk["score"] is not None else "  -  "
        kind = "" if lk["kind"] == "one_to_one" else f" [{lk['kind']}]"
        lines.append(f"  #{lk['id']:<6} {score} {lk['status']:<8} {lk['left_name']} ↔ "
                     f"{lk['right_name']}{kind}  ({why})")
    return "\n".join(lines)


@command(_top, "links")
@REG
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest).")
@click.option("--status", type=click.Choice(["auto", "review", "accepted", "rejected"]),
              default=None, help="Only links with this status.")
@click.option("--kind", type=click.Choice(["one_to_one", "split", "merge"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Show at most this many links.")
@click.option("--unmatched", type=click.Choice(["left", "right"]), default=None,
              help="List the units of one side that no link covers instead.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the run's links as CSV (and the unmatched units beside it).")
def links_cmd(reg: str, run_id: int | None, status: str | None, kind: str | None,
              limit: int | None, unmatched: str | None, out: str | None, as_json: bool) -> None:
    """List the links of a matching run, with their evidence."""
    from storage.matching import review

    with open_registry(reg) as registry:
        if out:
            created = _check_out(out)
            try:
                files = review.write_csv(registry, run_id, out)
            except BaseException:
                if created:
                    Path(out).unlink(missing_ok=True)
                raise
            emit(as_json, files,
                 lambda d: "\n".join(f"Wrote {v}" for v in d.values()))
            return
        if unmatched:
            units = review.unmatched(registry, run_id, unmatched)
            emit(as_json, units, lambda d: "\n".join(
                [f"{len(d)} unmatched {unmatched} unit(s):"]
                + [f"  {u['ref']}  {u['name']}  (in {u['parent']})" for u in d]))
            return
        data = review.list_links(registry, run_id, status=status, kind=kind, limit=limit)
    emit(as_json, data, _links_text)


@click.group("link", help="Review links: accept, reject, or relink to another unit.")
def link_group() -> None:
    pass


REVIEWER = click.option("--reviewer", default=None,
                        help="Who decides (default: the logged-in user).")
FORCE = click.option("--force", is_flag=True,
                     help="Accept even when a unit already has another partner the merge "
                          "uses, accepted or auto (refused otherwise: the merge would use "
                          "only one of the two links).")


def _decision_text(d: list[dict[str, Any]]) -> str:
    return "\n".join(f"Link #{lk['id']} {lk['left_name']} ↔ {lk['right_name']}: {lk['status']} "
                     f"by {lk['reviewer']}." for lk in d)


@command(link_group, "accept")
@REG
@click.argument("link_ids", nargs=-1, type=int, required=True)
@REVIEWER
@FORCE
def accept_cmd(reg: str, link_ids: tuple[int, ...], reviewer: str | None, force: bool,
               as_json: bool) -> None:
    """Accept links: the two units are the same place."""
    _decide(reg, link_ids, "accepted", reviewer, as_json, force)


@command(link_group, "reject")
@REG
@click.argument("link_ids", nargs=-1, type=int, required=True)
@REVIEWER
def reject_cmd(reg: str, link_ids: tuple[int, ...], reviewer: str | None,
               as_json: bool) -> None:
    """Reject links: not the same place (a new run will not propose them again)."""
    _decide(reg, link_ids, "rejected", reviewer, as_json)


def _decide(reg: str, link_ids: tuple[int, ...], decision: str, reviewer: str | None,
            as_json: bool, force: bool = False) -> None:
    from storage.matching.review import decide

    with open_registry(reg) as registry:
        data = decide(registry, list(link_ids), decision, reviewer=reviewer or _whoami(),
                      origin=ORIGIN, force=force)
    emit(as_json, data, _decision_text)


@command(link_group, "relink")
@REG
@click.argument("link_id", type=int)
@click.option("--right", "right_unit", required=True,
              help="The right unit (uuid or ref) the left unit really is.")
@REVIEWER
@FORCE
def relink_cmd(reg: str, link_id: int, right_unit: str, reviewer: str | None, force: bool,
               as_json: bool) -> None:
    """Link the left unit of LINK_ID to another right unit (the old link is rejected)."""
    from storage.matching.review import relink

    with open_registry(reg) as registry:
        data = relink(registry, link_id, right_unit, reviewer=reviewer or _whoami(),
                      origin=ORIGIN, force=force)
    emit(as_json, [data], _decision_text)


COMMANDS = [_top.commands["match"], _top.commands["links"], link_group]
