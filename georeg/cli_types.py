"""``georeg type …`` and ``georeg group …``: list, add and rename org-unit types and groups.

Before these, ``unit add --type Hospital`` or ``unit group --add "Public facilities"``
could only list what existed: a new type or group came only with an imported file.
Types are registry-wide; groups belong to one version of a source, edited in a draft
(see :mod:`storage.types_groups`).
"""

from __future__ import annotations

from typing import Any

import click

from georeg.cli import ORIGIN, REG, SOURCE, VERSION, command, emit, open_registry, the_source


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from georeg.render import _table as table

    return table(headers, rows)


@click.group("type", help="Org-unit types (shared by every source and version): list, add, "
             "rename.")
def type_group() -> None:
    pass


def _types_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No org-unit type yet. Add one with: georeg type add REG NAME --level N"
    return _table(["type", "level", "short name", "unit rows (all versions)"],
                  [[t["name"], t["level"], t["short_name"], t["units"]] for t in rows])


@command(type_group, "list")
@REG
def type_list_cmd(reg: str, as_json: bool) -> None:
    """List the org-unit types, by level, with how many units use each."""
    from storage.types_groups import list_types

    with open_registry(reg) as registry:
        emit(as_json, list_types(registry), _types_text)


@command(type_group, "add")
@REG
@click.argument("name")
@click.option("--level", type=int, default=None,
              help="Tree level its units belong at (1 = the roots); 'georeg check' warns "
              "about a unit of this type at another level.")
@click.option("--short-name", default=None)
def type_add_cmd(reg: str, name: str, level: int | None, short_name: str | None,
                 as_json: bool) -> None:
    """Add an org-unit type named NAME (unique, case aside)."""
    from storage.types_groups import add_type

    with open_registry(reg) as registry:
        data = add_type(registry, name, short_name=short_name, level=level, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Added org-unit type {d['name']!r}"
         + (f" (level {d['level']})." if d["level"] else "."))


@command(type_group, "rename")
@REG
@click.argument("name")
@click.argument("new_name")
def type_rename_cmd(reg: str, name: str, new_name: str, as_json: bool) -> None:
    """Rename the type NAME to NEW_NAME (refused when units of a published version use it:
    published versions never change)."""
    from storage.types_groups import rename_type

    with open_registry(reg) as registry:
        data = rename_type(registry, name, new_name, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Renamed org-unit type {d['old_name']!r} to {d['name']!r} "
         f"({d['units']} unit row(s) use it).")


@click.group("group", help="Org-unit groups of a version (edited in a draft): list, add, "
             "rename. 'georeg unit group' puts units in them.")
def group_group() -> None:
    pass


def _groups_text(d: dict[str, Any]) -> str:
    label = d["version"]["label"]
    if not d["groups"]:
        return (f"{label} has no group yet. Add one with: georeg group add REG NAME "
                f"-s \"{d['version']['source']}\" -v {d['version']['number']}")
    return f"Groups of {label}:\n" + _table(
        ["group", "ref", "code", "units"],
        [[g["name"], g["ref"], g["code"], g["units"]] for g in d["groups"]])


@command(group_group, "list")
@REG
@SOURCE
@VERSION
def group_list_cmd(reg: str, source: str | None, number: int | None, as_json: bool) -> None:
    """List the groups of a version with their number of units."""
    from storage.types_groups import list_groups

    with open_registry(reg) as registry:
        emit(as_json, list_groups(registry, the_source(registry, source), number), _groups_text)


@command(group_group, "add")
@REG
@click.argument("name")
@SOURCE
@VERSION
@click.option("--ref", default=None, help="External id (e.g. the DHIS2 uid of the group).")
@click.option("--code", default=None)
@click.option("--short-name", default=None)
def group_add_cmd(reg: str, name: str, source: str | None, number: int | None,
                  ref: str | None, code: str | None, short_name: str | None,
                  as_json: bool) -> None:
    """Add an empty group named NAME to a draft version (names unique in the version)."""
    from storage.types_groups import add_group

    with open_registry(reg) as registry:
        data = add_group(registry, the_source(registry, source), name, number=number, ref=ref,
                         code=code, short_name=short_name, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Added group {d['name']!r} to {d['version']}. Put units in "
         "it with: georeg unit group REG UNIT --add \"" + d["name"] + "\" -s SOURCE -v N")


@command(group_group, "rename")
@REG
@click.argument("group")
@click.argument("new_name")
@SOURCE
@VERSION
def group_rename_cmd(reg: str, group: str, new_name: str, source: str | None,
                     number: int | None, as_json: bool) -> None:
    """Rename GROUP (its ref or name) of a draft version to NEW_NAME; its units stay."""
    from storage.types_groups import rename_group

    with open_registry(reg) as registry:
        data = rename_group(registry, the_source(registry, source), group, new_name,
                            number=number, origin=ORIGIN)
    emit(as_json, data, lambda d: f"Renamed group {d['old_name']!r} to {d['name']!r} in "
         f"{d['version']} ({d['units']} unit(s)).")


COMMANDS = [type_group, group_group]
