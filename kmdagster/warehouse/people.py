"""Who is who: ``km_identity_groups`` maps each aliased identity to its group's person id.

Kept in the chunk's own transaction: a chunk's alias pairs are joined with the groups its
identities already belong to, and those groups are written again as one. Identities
never aliased have no row; ``km_people`` gives them their own id.
"""

from __future__ import annotations

import polars as pl

from kmdagster.km_format.identities import identity_groups
from kmdagster.warehouse.database import Database


def add_alias_pairs(database: Database, aliases: pl.DataFrame) -> None:
    """Merge the groups of ``aliases`` (columns ``person``, ``alias``) into the warehouse's."""
    pairs = aliases.select(a="person", b="alias").unique()
    if pairs.height == 0:
        return
    identities = pl.concat([pairs.get_column("a"), pairs.get_column("b")])
    # Groups are read and rewritten whole: imports of two sources take turns at it.
    database.serialize("km_identity_groups")
    with database.temporary("km_touched", identities.unique().to_frame("identity")):
        members = database.frame(
            "SELECT identity AS a, person_id AS b FROM km_identity_groups WHERE person_id IN "
            "(SELECT g.person_id FROM km_identity_groups AS g "
            "JOIN km_touched AS t ON t.identity = g.identity)"
        )
    groups = identity_groups(pl.concat([pairs, members.cast(pl.String)]))
    with database.temporary("km_regrouped", groups):
        database.execute(
            "DELETE FROM km_identity_groups WHERE identity IN (SELECT identity FROM km_regrouped)"
        )
        database.execute(
            "INSERT INTO km_identity_groups SELECT identity, person_id FROM km_regrouped"
        )
