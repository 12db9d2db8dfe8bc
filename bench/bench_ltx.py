"""LTX codec throughput: encode and decode MB/s of page data, for both page encodings.

    python bench/bench_ltx.py [--mib 128] [--runs 3]

Pages come from a real SQLite database (built in a temp dir with apsw: half hex text, half
random bytes per row, like bench_restore.py), so LZ4 sees realistic data. Everything runs in
memory (BytesIO), so this measures the codec only: LZ4, CRC-64 and our per-page Python work.
Best of ``--runs``.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import apsw

from replication import ltx

PAGE_SIZE = 4096


def sample_pages(mib: int) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sample.db")
        conn = apsw.Connection(path)
        conn.execute("PRAGMA page_size=4096")
        conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT, payload BLOB)")
        rows = mib * (1 << 20) // 380
        with conn:
            conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                "INSERT INTO items(label, payload) SELECT hex(randomblob(100)), randomblob(150) "
                "FROM c", (rows,))
        conn.close()
        data = open(path, "rb").read()
    return [data[i:i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]


def encode(pages: list[bytes], encoding: str) -> tuple[bytes, float]:
    out = io.BytesIO()
    header = ltx.Header(ltx.HEADER_FLAG_NO_CHECKSUM, PAGE_SIZE, len(pages), 1, 1, 0)
    start = time.perf_counter()
    enc = ltx.Encoder(out, header, encoding=encoding)
    for pgno, page in enumerate(pages, start=1):
        enc.encode_page(pgno, page)
    enc.close()
    return out.getvalue(), time.perf_counter() - start


def decode(data: bytes) -> float:
    start = time.perf_counter()
    dec = ltx.Decoder(io.BytesIO(data))
    for _ in dec.pages():
        pass
    dec.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    pages = sample_pages(args.mib)
    volume = len(pages) * PAGE_SIZE
    print(f"{len(pages)} pages, {volume / 1e6:.0f} MB of page data")
    for encoding in ltx.ENCODINGS:
        enc_times, dec_times = [], []
        for _ in range(args.runs):
            data, t = encode(pages, encoding)
            enc_times.append(t)
            dec_times.append(decode(data))
        print(f"{encoding:>5}: file {len(data) / volume:.0%} of page data | "
              f"encode {volume / min(enc_times) / 1e6:.0f} MB/s | "
              f"decode+verify {volume / min(dec_times) / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
