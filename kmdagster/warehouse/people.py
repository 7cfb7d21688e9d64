"""Who is who: ``km_identity_groups`` maps each aliased identity to its group's person id.

A chunk's alias pairs are joined with the groups its identities already belong to, and
those groups are written again as one. Identities never aliased have no row;
``km_people`` gives them their own id.

In the DuckDB file and PostgreSQL the merge is part of the chunk's own transaction. On a
lake, rewriting groups deletes from the table, and a commit that deletes conflicts with
every other writer's insert into it: two sources' chunks would refuse each other and be
read again whole. There a chunk commits its pairs (in ``km_aliases``) and then merges them
in a small transaction of its own, tried again on conflict, with a row in
``km_alias_merges`` saying how far into the file version the groups go; a merge that
never ran (the process was killed between the two commits) is caught up by the next
writer that opens the lake, from the committed pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from kmdagster.km_format.identities import identity_groups
from kmdagster.seams import crash_point
from kmdagster.warehouse.database import transaction

if TYPE_CHECKING:
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


def merge_aliases_apart(
    database: Database, file_id: int, pairs: pl.DataFrame, through_line: int
) -> None:
    """On a lake: ``pairs``, committed for ``file_id`` up to ``through_line``, merged into
    the groups in a transaction of their own (tried again while another writer's merge
    commits first), recorded in ``km_alias_merges``."""

    def merge() -> None:
        add_alias_pairs(database, pairs)
        database.execute("INSERT INTO km_alias_merges VALUES ($1, $2)", [file_id, through_line])

    transaction(database, merge)


def merge_pending_aliases(database: Database) -> None:
    """On a lake: merge the committed pairs of every file version whose merges stop short
    of its committed lines."""
    pending = database.rows(
        "SELECT f.file_id, coalesce(max(m.through_line), 0), f.lines_read "
        "FROM km_import_files AS f LEFT JOIN km_alias_merges AS m ON m.file_id = f.file_id "
        "WHERE f.aliases_rows > 0 GROUP BY f.file_id, f.lines_read "
        "HAVING coalesce(max(m.through_line), 0) < f.lines_read"
    )
    for file_id, merged_through, lines_read in pending:
        pairs = database.frame(
            "SELECT person, alias FROM km_alias_rows WHERE file_id = $1 AND line_no > $2 "
            "AND line_no <= $3",
            [file_id, merged_through, lines_read],
        )
        merge_aliases_apart(database, file_id, pairs, lines_read)


class MergedInChunk:
    def in_chunk(self, database: Database, pairs: pl.DataFrame) -> None:
        add_alias_pairs(database, pairs)

    def after_chunk(
        self, database: Database, file_id: int, pairs: pl.DataFrame, through_line: int
    ) -> None:
        """Merged already."""

    def catch_up(self, database: Database) -> None:
        """Nothing is ever left undone: the merge commits with its chunk."""


class MergedApart:
    def in_chunk(self, database: Database, pairs: pl.DataFrame) -> None:
        """Merged after the commit: the pairs are in ``km_aliases`` now."""

    def after_chunk(
        self, database: Database, file_id: int, pairs: pl.DataFrame, through_line: int
    ) -> None:
        crash_point("commit_chunk.aliases_committed")
        merge_aliases_apart(database, file_id, pairs, through_line)

    def catch_up(self, database: Database) -> None:
        merge_pending_aliases(database)


MERGED_IN_CHUNK = MergedInChunk()
MERGED_APART = MergedApart()
