"""Who is who: ``km_identity_groups`` maps each aliased identity to its group's person id.

Kept in the chunk's own transaction: a chunk's alias pairs are joined with the groups its
identities already belong to, and those groups are written again as one. Identities
never aliased have no row; ``km_people`` gives them their own id.
"""

from __future__ import annotations

import duckdb
import polars as pl

from kmdagster.format.identities import identity_groups


def add_alias_pairs(con: duckdb.DuckDBPyConnection, aliases: pl.DataFrame) -> None:
    """Merge the groups of ``aliases`` (columns ``person``, ``alias``) into the warehouse's."""
    pairs = aliases.select(a="person", b="alias").unique()
    if pairs.height == 0:
        return
    identities = pl.concat([pairs.get_column("a"), pairs.get_column("b")])
    touched = identities.unique().to_frame("identity")  # noqa: F841 - read by DuckDB
    members = con.sql(
        "SELECT identity AS a, person_id AS b FROM km_identity_groups WHERE person_id IN "
        "(SELECT g.person_id FROM km_identity_groups AS g "
        "JOIN touched AS t ON t.identity = g.identity)"
    ).pl()
    groups = identity_groups(pl.concat([pairs, members.cast(pl.String)]))  # noqa: F841 - as above
    con.execute("DELETE FROM km_identity_groups WHERE identity IN (SELECT identity FROM groups)")
    con.execute("INSERT INTO km_identity_groups SELECT identity, person_id FROM groups")
