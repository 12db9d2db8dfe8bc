"""Replication positions in HTTP headers (design/read-replicas.md, "Positions and their
identity").

- ``X-Replication-Txid: <16 hex>``: the TXID a write committed at (on a primary with
  replication), or the snapshot a read on a replica served.
- ``X-Replication-Position: <16 hex TXID>@<16 hex lineage>``: a primary's write, naming the
  history the TXID belongs to, so a replica can tell a write lost by a restore of the primary
  from one it has not reached yet.
- ``X-Replication-Min-Txid``, on a replica read, takes either form back.
"""
from __future__ import annotations

from typing import Optional

from replication.primary import current_lineage

from ..errors import api_error

TXID_HEADER = "X-Replication-Txid"
POSITION_HEADER = "X-Replication-Position"


def format_txid(txid: int) -> str:
    return f"{txid:016x}"  # as the primary's X-Replication-Txid


def commit_headers(commit_result) -> list[tuple[str, str]]:
    """The position headers of a committed write (none without replication)."""
    if commit_result is None:
        return []
    txid = str(commit_result)
    lineage = current_lineage()
    if lineage is None:
        return [(TXID_HEADER, txid)]
    return [(TXID_HEADER, txid), (POSITION_HEADER, f"{txid}@{lineage}")]


def parse_position(text: str, header: str) -> tuple[int, Optional[str]]:
    """``<TXID>`` or ``<TXID>@<lineage>`` (the forms of X-Replication-Txid and
    X-Replication-Position): (txid, lineage id or None). 400 for anything else."""
    txid_text, at, lineage = text.strip().partition("@")
    try:
        if not txid_text or len(txid_text) > 16 or (at and len(lineage) != 16):
            raise ValueError
        txid = int(txid_text, 16)
        if at:
            int(lineage, 16)
    except ValueError:
        raise api_error("query_parse", message=f"{header}: {text.strip()[:60]!r} is not a position",
                        details="a position is the 16 hex digits of X-Replication-Txid, or "
                                "X-Replication-Position's <txid>@<lineage>",
                        hint="send back the X-Replication-Position (or X-Replication-Txid) a "
                             "write answered") from None
    return txid, (lineage.lower() if at else None)
