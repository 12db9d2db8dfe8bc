"""Merge contiguous LTX files into one (level compaction, and the reference model of restore).

A streaming k-way merge (``heapq.merge``) over the inputs' pages: for each page number the
version from the newest input wins, and pages past the last input's Commit are dropped (the
database shrank). Memory holds one page per input, whatever the file sizes.
"""
from __future__ import annotations

import heapq
from typing import BinaryIO, Sequence

from replication.errors import LTXError
from replication.ltx import (ENCODING_FRAME, HEADER_FLAG_NO_CHECKSUM, Decoder, Encoder, Header,
                             Trailer)


def compaction_header(headers: Sequence[Header], *, flags: int = HEADER_FLAG_NO_CHECKSUM,
                      names: Sequence[str] = ()) -> Header:
    """The header of the merged file (spec §1.7); raises unless inputs are mergeable."""
    if not headers:
        raise LTXError("compaction needs at least one input file")
    names = list(names) or [""] * len(headers)
    first, last = headers[0], headers[-1]
    for i in range(1, len(headers)):
        prev, cur = headers[i - 1], headers[i]
        if cur.page_size != first.page_size:
            raise LTXError(f"cannot compact ltx files with different page sizes: "
                           f"{first.page_size} and {cur.page_size} ({names[i]})")
        if cur.min_txid > prev.max_txid + 1 or cur.max_txid <= prev.max_txid:
            raise LTXError(
                f"non-contiguous ltx files: {prev.min_txid:016x}-{prev.max_txid:016x} then "
                f"{cur.min_txid:016x}-{cur.max_txid:016x}",
                hint="inputs must be sorted by TXID with no gap between them")
    return Header(
        flags=flags,
        page_size=first.page_size,
        commit=last.commit,
        min_txid=first.min_txid,
        max_txid=last.max_txid,
        timestamp=last.timestamp,
        pre_apply_checksum=0 if flags & HEADER_FLAG_NO_CHECKSUM else first.pre_apply_checksum,
    )


def merged_pages(decoders: Sequence[Decoder], commit: int):
    """Yield ``(pgno, data)`` ascending, newest input's version of each page, pgno ≤ commit."""
    def tagged(rank: int, dec: Decoder):
        for pgno, data in dec.pages():
            yield pgno, rank, data

    # Ties on pgno sort by descending input index, so the first of each pgno is the newest.
    streams = [tagged(-i, dec) for i, dec in enumerate(decoders)]
    last = 0
    for pgno, _, data in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        if pgno == last:
            continue
        last = pgno
        if pgno > commit:
            continue  # keep draining: every input must still be read to verify its checksum
        yield pgno, data


def compact(decoders: Sequence[Decoder], out: BinaryIO, *,
            flags: int = HEADER_FLAG_NO_CHECKSUM, encoding: str = ENCODING_FRAME,
            name: str = "") -> tuple[Header, Trailer]:
    """Merge ``decoders`` (sorted by TXID, contiguous, same page size) into one file on ``out``.

    Every input is read to its end and checksum-verified before the output is closed, so a
    corrupt input raises instead of producing a file. Litestream writes compactions with
    NoChecksum (the default ``flags``), and so do we.
    """
    if not flags & HEADER_FLAG_NO_CHECKSUM:
        raise LTXError("compaction with checksum tracking is not supported",
                       hint="Litestream writes every compacted file with the NoChecksum flag")
    header = compaction_header([d.header for d in decoders], flags=flags,
                               names=[d.name for d in decoders])
    enc = Encoder(out, header, encoding=encoding, name=name)
    for pgno, data in merged_pages(decoders, header.commit):
        enc.encode_page(pgno, data)
    for dec in decoders:
        dec.close()
    return header, enc.close()
