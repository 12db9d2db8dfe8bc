"""Micro-benchmark: query string -> AST -> SQL (and one apsw execution).

Prints µs per operation. Run: python bench/bench_query.py [--seconds 1.0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import apsw

from sqlite_rest.api import query as query_module
from sqlite_rest.api.query import parse_read_query
from sqlite_rest.api.schema import SchemaCache
from sqlite_rest.api.sql import build_select, register_functions

COMPLEX = [("select", "id,name,score,city:data->addr->>city"),
           ("or", "(age.lt.18,and(age.gte.65,name.ilike.a*))"),
           ("name", "not.is.null"), ("id", "in.(1,2,3,4,5,6,7,8)"),
           ("order", "age.desc.nullslast,id"), ("limit", "10"), ("offset", "20")]


def clear_parse_caches():
    for name in ("parse_filter", "parse_logic", "parse_select", "parse_order",
                 "parse_columns", "_parse_read_query"):
        getattr(query_module, name).cache_clear()


def measure(label: str, fn, seconds: float, rounds: int = 5) -> float:
    """Best of `rounds` rounds (the machine may be shared: the minimum is the
    least disturbed figure); returns µs per call."""
    fn()  # warm up
    best = float("inf")
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            for _ in range(100):
                fn()
            n += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / n * 1e6)
    print(f"{label:<58} {best:8.2f} µs   ({1e6 / best:>10,.0f}/s)")
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        conn = apsw.Connection(os.path.join(tmp, "bench.db"))
        register_functions(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT, age INT, "
                     "score REAL, data JSON)")
        with conn:
            conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)",
                             ((i, f"name{i}", i % 90, i / 7, '{"addr":{"city":"x"}}')
                              for i in range(1, 10001)))
        cache = SchemaCache()
        table = cache.get(conn).table("people")
        counter = iter(range(1, 1 << 62))

        def pk_hit():
            build_select(table, parse_read_query([("id", "eq.5")]))

        def pk_miss():  # a new id each time: the parse cache cannot help
            build_select(table, parse_read_query([("id", f"eq.{next(counter) % 10000 + 1}")]))

        def pk_cold():
            clear_parse_caches()
            build_select(table, parse_read_query([("id", "eq.5")]))

        def complex_hit():
            build_select(table, parse_read_query(COMPLEX))

        def complex_cold():
            clear_parse_caches()
            build_select(table, parse_read_query(COMPLEX))

        def parse_only_miss():
            parse_read_query([("id", f"eq.{next(counter)}")])

        def schema_check():
            cache.get(conn)

        cursor = conn.cursor()

        def pk_end_to_end():
            s = cache.get(conn)
            statement = build_select(s.table("people"),
                                     parse_read_query([("id", f"eq.{next(counter) % 10000 + 1}")]))
            cursor.execute(statement.sql, statement.params).fetchall()

        print(f"SQLite {apsw.sqlite_lib_version()}, apsw {apsw.apsw_version()}")
        measure("GET-by-PK parse+build (id=eq.5, cached shape)", pk_hit, args.seconds)
        measure("GET-by-PK parse+build (new id each time)", pk_miss, args.seconds)
        measure("GET-by-PK parse+build (all caches cleared)", pk_cold, args.seconds)
        measure("parse only (new id each time)", parse_only_miss, args.seconds)
        measure("complex query parse+build (cached)", complex_hit, args.seconds)
        measure("complex query parse+build (all caches cleared)", complex_cold, args.seconds)
        measure("schema cache check (PRAGMA schema_version)", schema_check, args.seconds)
        measure("GET-by-PK schema+parse+build+execute+fetch", pk_end_to_end, args.seconds)


if __name__ == "__main__":
    main()
