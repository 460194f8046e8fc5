"""Alembic migrations of the registry schema (run by ``storage.registry``)."""
