"""KISSmetrics identities: aliases join identities into one person, symmetrically and
transitively, so chains and cycles of aliases resolve to one group.

``identity_groups`` is pure and vectorised: connected components by min-label
propagation with pointer jumping (each round takes every node's smallest neighbouring
label, then follows labels to their root), which settles chains in a logarithmic number
of rounds. A group's person id is its smallest identity, so it does not depend on the
order aliases arrive in.
"""

from __future__ import annotations

import polars as pl

_ID = pl.UInt32


def identity_groups(pairs: pl.DataFrame) -> pl.DataFrame:
    """``identity, person_id`` for every identity in ``pairs`` (columns ``a``, ``b``)."""
    nodes = (
        pl.concat([pairs.get_column("a"), pairs.get_column("b")])
        .unique()
        .sort()
        .to_frame("identity")
        .with_row_index("node")
    )
    if nodes.height == 0:
        return pl.DataFrame(schema={"identity": pl.String, "person_id": pl.String})
    mapped = pairs.join(
        nodes.rename({"identity": "a", "node": "a_node"}), on="a", maintain_order="left"
    ).join(nodes.rename({"identity": "b", "node": "b_node"}), on="b", maintain_order="left")
    a_nodes, b_nodes = mapped.get_column("a_node"), mapped.get_column("b_node")
    edges = pl.DataFrame(
        {"src": pl.concat([a_nodes, b_nodes]), "dst": pl.concat([b_nodes, a_nodes])}
    ).cast(_ID)
    label = pl.Series("label", range(nodes.height), dtype=_ID)
    while True:
        lowest = (
            edges.with_columns(nbr=label.gather(edges.get_column("dst")))
            .group_by("src")
            .agg(pl.col("nbr").min())
        )
        lowest = lowest.select(
            "src", new=pl.min_horizontal(label.gather(lowest.get_column("src")), "nbr")
        )
        hooked = label.clone().scatter(lowest.get_column("src"), lowest.get_column("new"))
        jumped = _follow_to_roots(hooked)
        if jumped.equals(label):
            break
        label = jumped
    return nodes.select("identity", person_id=nodes.get_column("identity").gather(label))


def _follow_to_roots(label: pl.Series) -> pl.Series:
    """Replace each label by its label's label until nothing changes (pointer jumping)."""
    while True:
        jumped = label.gather(label)
        if jumped.equals(label):
            return label
        label = jumped
