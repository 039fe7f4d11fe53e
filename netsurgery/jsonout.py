"""The JSON files netsurgery writes. Each has one shape whatever the number of heads or tasks,
starts with ``"schema": "netsurgery.<kind>/<version>"``, and is described by the JSON Schema
``docs/schemas/<kind>.schema.json`` (the tests validate real outputs against it). The version
goes up when a field changes meaning or goes away; fields may be added without a new version.
"""
from __future__ import annotations

import json
import os

from netsurgery.fileio import atomic_write_text

VERSIONS = {"info": 1, "diff": 1, "detect": 1, "eval": 1, "sweep": 1, "suggest-k": 2}


def schema_name(kind: str) -> str:
    """``netsurgery.<kind>/<version>`` for one of :data:`VERSIONS`."""
    return f"netsurgery.{kind}/{VERSIONS[kind]}"


def document(kind: str, payload: dict) -> dict:
    """``payload`` with its schema name first."""
    return {"schema": schema_name(kind), **payload}


def write_document(path: str | os.PathLike, kind: str, payload: dict) -> None:
    """Write ``payload`` as a ``kind`` document, atomically (UTF-8, indented)."""
    atomic_write_text(path, json.dumps(document(kind, payload), indent=1) + "\n")
