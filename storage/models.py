"""SQLAlchemy 2 typed models of the registry tables.

The tables themselves are created by the Alembic migrations (with the triggers
and the GeoPackage registration no ORM knows about); these models describe the
same columns for typed queries and are checked against every backend's real
schema by ``tests/test_models.py``.  Geometry columns use GeoAlchemy2 types;
Georeg code reads and writes geometry through :mod:`storage.geometry`, which
knows each backend's encoding (GeoPackage blobs, SpatiaLite, PostGIS).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import JSON, BigInteger, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {str: Text(), int: BigInteger(), dict[str, Any]: JSON(),
                           list[Any]: JSON()}


class DataSource(Base):
    __tablename__ = "data_source"
    fid: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    description: Mapped[str | None]
    read_only: Mapped[bool]
    default_version_id: Mapped[int | None]
    upstream: Mapped[str | None]
    created_at: Mapped[str] = mapped_column(String)


class SourceVersion(Base):
    __tablename__ = "source_version"
    fid: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("data_source.fid"))
    number: Mapped[int]
    status: Mapped[str]  # 'draft' | 'published'
    description: Mapped[str | None]
    copied_from_id: Mapped[int | None]
    created_at: Mapped[str]
    created_by: Mapped[str | None]
    published_at: Mapped[str | None]
    published_by: Mapped[str | None]


class OrgUnitType(Base):
    __tablename__ = "org_unit_type"
    fid: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    short_name: Mapped[str | None]
    depth: Mapped[int | None]
    category: Mapped[str | None]
    sub_types: Mapped[list[Any] | None]


class OrgUnit(Base):
    """One unit in one version; ``unit_key`` and ``uuid`` are stable across versions."""

    __tablename__ = "org_unit"
    fid: Mapped[int] = mapped_column(primary_key=True)
    location: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326), nullable=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("source_version.fid"))
    unit_key: Mapped[int | None]
    uuid: Mapped[str | None]
    source_ref: Mapped[str | None]
    name: Mapped[str]
    code: Mapped[str | None]
    type_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit_type.fid"))
    parent_key: Mapped[int | None]
    path: Mapped[str | None]
    depth: Mapped[int | None]
    validation_status: Mapped[str]
    opening_date: Mapped[dt.date | None]
    closed_date: Mapped[dt.date | None]
    aliases: Mapped[list[Any] | None]
    extra_fields: Mapped[dict[str, Any] | None]


class OrgUnitTerritory(Base):
    __tablename__ = "org_unit_territory"
    fid: Mapped[int] = mapped_column(primary_key=True)
    territory: Mapped[Any] = mapped_column(Geometry("MULTIPOLYGON", srid=4326), nullable=True)
    unit_fid: Mapped[int] = mapped_column(ForeignKey("org_unit.fid"), unique=True)
    version_id: Mapped[int | None]
    name: Mapped[str | None]


class OrgUnitGroup(Base):
    __tablename__ = "org_unit_group"
    fid: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("source_version.fid"))
    group_key: Mapped[int | None]
    source_ref: Mapped[str | None]
    name: Mapped[str]
    short_name: Mapped[str | None]
    code: Mapped[str | None]


class GroupMembership(Base):
    __tablename__ = "group_membership"
    fid: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("source_version.fid"))
    group_key: Mapped[int]
    unit_key: Mapped[int]


class GroupSet(Base):
    __tablename__ = "group_set"
    fid: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("source_version.fid"))
    set_key: Mapped[int | None]
    source_ref: Mapped[str | None]
    name: Mapped[str]
    short_name: Mapped[str | None]
    belonging: Mapped[str]
    compulsory: Mapped[bool]


class GroupSetMember(Base):
    __tablename__ = "group_set_member"
    fid: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("source_version.fid"))
    set_key: Mapped[int]
    group_key: Mapped[int]


class ChangeLog(Base):
    """The audit trail: one row per change, whoever made it."""

    __tablename__ = "change_log"
    fid: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[str]
    version_id: Mapped[int | None]
    entity: Mapped[str]  # org_unit | territory | group_membership | version
    op: Mapped[str]  # insert | update | delete | create | publish | …
    unit_uuid: Mapped[str | None]
    unit_key: Mapped[int | None]
    record_fid: Mapped[int | None]
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    origin: Mapped[str]  # cli | api | server | dhis2_import | external (QGIS, GDAL, SQL) …
    author: Mapped[str | None]
    operation: Mapped[str | None]


class AlgorithmRun(Base):
    __tablename__ = "algorithm_run"
    fid: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    left_version_id: Mapped[int | None]
    right_version_id: Mapped[int | None]
    parameters: Mapped[dict[str, Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    status: Mapped[str]
    launched_by: Mapped[str | None]
    started_at: Mapped[str]
    ended_at: Mapped[str | None]


class Link(Base):
    __tablename__ = "link"
    fid: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("algorithm_run.fid"))
    left_version_id: Mapped[int]
    left_unit_uuid: Mapped[str | None]
    right_version_id: Mapped[int]
    right_unit_uuid: Mapped[str | None]
    score: Mapped[float | None]
    status: Mapped[str]
    kind: Mapped[str]
    evidence: Mapped[dict[str, Any] | None]
    reviewer: Mapped[str | None]
    reviewed_at: Mapped[str | None]
    created_at: Mapped[str]


class ChangeRequest(Base):
    """A field team's proposed creation or correction of a unit (Iaso's OrgUnitChangeRequest)."""

    __tablename__ = "change_request"
    fid: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(unique=True)
    version_id: Mapped[int]
    unit_uuid: Mapped[str | None]
    kind: Mapped[str]
    status: Mapped[str]
    requested_fields: Mapped[list[Any] | None]
    approved_fields: Mapped[list[Any] | None]
    new_parent_uuid: Mapped[str | None]
    new_name: Mapped[str | None]
    new_type_id: Mapped[int | None]
    new_code: Mapped[str | None]
    new_opening_date: Mapped[dt.date | None]
    new_closed_date: Mapped[dt.date | None]
    new_groups: Mapped[list[Any] | None]
    new_location_wkb: Mapped[bytes | None] = mapped_column(LargeBinary)
    new_location_accuracy: Mapped[float | None]
    new_territory_wkb: Mapped[bytes | None] = mapped_column(LargeBinary)
    old_values: Mapped[dict[str, Any] | None]
    device: Mapped[str | None]
    created_by: Mapped[str | None]
    created_at: Mapped[str]
    reviewed_by: Mapped[str | None]
    reviewed_at: Mapped[str | None]
    rejection_comment: Mapped[str | None]
