"""kmdagster as a Dagster Component: KISSmetrics imports inside any ``dg`` project.

A ``defs.yaml`` whose ``type`` is ``kmdagster.component.KmImports`` takes the same
sections as ``kmdagster.yaml`` (``s3``, ``warehouse``, ``sources``, ``alerts``:
docs/reference.md)
and builds the same assets, checks, sensors, schedules, jobs and resources, with the
same names.

Each attribute's schema, which ``dg`` shows and the editor's YAML support checks, is the
schema of its ``config.py`` section. The values themselves are checked by ``config.py``
when the definitions are built, so an error reads the same either way: the file, the
field's path and what to give (pydantic's own wording, from ``dg``'s validation, would
name neither the file nor the known keys).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

import dagster as dg
from pydantic import WithJsonSchema

from kmdagster.config import KmConfig, parse_config
from kmdagster.defs.factory import build_definitions

# Copied from the s3 section when the configuration is read: never written in a file.
_DERIVED_KEYS = {"warehouse": ("s3",)}


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` to ``definitions`` replaced by what it names: an
    attribute's schema stands alone, outside the model that held the definitions."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inlined(definitions[node["$ref"].rsplit("/", 1)[1]], definitions)
        return {key: _inlined(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inlined(value, definitions) for value in node]
    return node


@cache
def section_schema(section: str) -> dict[str, Any]:
    """The JSON schema of one section of kmdagster.yaml, as a standalone document."""
    schema = KmConfig.model_json_schema()
    inlined = _inlined(schema["properties"][section], schema.get("$defs", {}))
    for key in _DERIVED_KEYS.get(section, ()):
        inlined["properties"].pop(key, None)
    return inlined


def _schema_of(section: str) -> WithJsonSchema:
    return WithJsonSchema(section_schema(section))


class KmImports(dg.Component, dg.Model, dg.Resolvable):
    """Recurring KISSmetrics JSON imports from S3: every file matching each source's base
    filename becomes a partition, imported one per tick into the warehouse and archived.
    Settings as in ``kmdagster.yaml``; credentials from the AWS chain, never from here."""

    s3: Annotated[dict[str, Any], _schema_of("s3")] = {}
    warehouse: Annotated[dict[str, Any], _schema_of("warehouse")] = {}
    sources: Annotated[list[dict[str, Any]], _schema_of("sources")] = []
    alerts: Annotated[dict[str, Any] | None, _schema_of("alerts")] = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        sections = {"s3": self.s3, "warehouse": self.warehouse, "sources": self.sources}
        if self.alerts is not None:
            sections["alerts"] = self.alerts
        return build_definitions(parse_config(sections, origin=str(context.path / "defs.yaml")))
