"""kmdagster as a Dagster Component: KISSmetrics imports inside any ``dg`` project.

A ``defs.yaml`` whose ``type`` is ``kmdagster.component.KmImports`` takes the same three
sections as ``kmdagster.yaml`` (``s3``, ``warehouse``, ``sources``: docs/reference.md)
and builds the same assets, checks, sensors, schedules, jobs and resources, with the
same names. The sections are checked by the same rules, so an error reads the same
either way: the file, the field's path and what to give.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from kmdagster.config import parse_config
from kmdagster.defs.factory import build_definitions


class KmImports(dg.Component, dg.Model, dg.Resolvable):
    """Recurring KISSmetrics JSON imports from S3: every file matching each source's base
    filename becomes a partition, imported one per tick into the warehouse and archived.
    Settings as in ``kmdagster.yaml``; credentials from the AWS chain, never from here."""

    s3: dict[str, Any] = {}
    warehouse: dict[str, Any] = {}
    sources: list[dict[str, Any]] = []

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        sections = {"s3": self.s3, "warehouse": self.warehouse, "sources": self.sources}
        return build_definitions(parse_config(sections, origin=str(context.path / "defs.yaml")))
