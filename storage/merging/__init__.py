"""Merge: by links and rules (two sources), 3-way (two drafts of one base), conflicts.

* :func:`merge_by_rules` / :class:`RulesMergeJob` — a new draft of the target
  from a target version, a source version, the accepted links and ``rules.toml``;
* :func:`merge_three_way` / :class:`ThreeWayMergeJob` — a new draft combining two
  drafts that descend from one base, field by field, with conflicts recorded;
* :func:`list_conflicts`, :func:`conflict_summary`, :func:`resolve_conflict` and, for
  many at once, :func:`resolve_conflicts` / :class:`BulkResolveJob` — review and settle
  conflicts;
  a version with open conflicts cannot be published (checked in
  :func:`storage.versions.publish_version` and by a database trigger).

Every merge is one transaction, runs the integrity checks on the new draft and
returns them in its report.  The user guide is ``docs/merge.md``.
"""

from storage.merging.conflicts import (
    TAKES,
    BulkResolveJob,
    conflict_summary,
    get_conflict,
    list_conflicts,
    open_conflict_count,
    resolve_conflict,
    resolve_conflicts,
)
from storage.merging.job import (
    SCHEMA,
    RulesMergeJob,
    ThreeWayMergeJob,
    load_links,
    merge_by_rules,
    merge_three_way,
)
from storage.merging.rules import RULE_HELP, Rules
from storage.merging.three_way import CONFLICT_KINDS

__all__ = [
    "BulkResolveJob",
    "CONFLICT_KINDS",
    "RULE_HELP",
    "SCHEMA",
    "TAKES",
    "Rules",
    "RulesMergeJob",
    "ThreeWayMergeJob",
    "conflict_summary",
    "get_conflict",
    "list_conflicts",
    "load_links",
    "merge_by_rules",
    "merge_three_way",
    "open_conflict_count",
    "resolve_conflict",
    "resolve_conflicts",
]
