"""The Go server's metrics: names, labels, counting rules, and merging across processes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import apsw
import jwt
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig
from sqlite_rest.observability.metrics import MetricsExposition, RequestMetrics, mark_worker_dead

SECRET = b"metrics-test-secret-0123456789abcdef"


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text, name, **labels):
    return sum(v for (n, ls), v in samples(text).items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def test_names_labels_and_buckets_match_the_go_server():
    registry = CollectorRegistry()
    m = RequestMetrics(registry)
    m.observe("books", "queryTableOrView", 200, 3.0)
    names = {f.name: f for f in registry.collect()}
    assert set(names) == {"sqlite_rest_http_requests", "sqlite_rest_http_request_duration_milliseconds",
                          "sqlite_rest_auth_failed_requests", "sqlite_rest_access_check_failed_requests"}
    assert names["sqlite_rest_http_request_duration_milliseconds"].type == "histogram"
    sample = [s for s in names["sqlite_rest_http_requests"].samples if s.name.endswith("_total")][0]
    assert sample.labels == {"target": "books", "operation": "queryTableOrView", "http_code": "200"}
    bounds = {s.labels["le"] for s in names["sqlite_rest_http_request_duration_milliseconds"].samples
              if s.name.endswith("_bucket")}
    assert {"1.0", "10.0", "100.0", "500.0", "1000.0"} <= bounds  # Go's buckets are kept


@pytest.fixture
def app_and_metrics(tmp_path):
    db = tmp_path / "m.db"
    conn = apsw.Connection(str(db))
    conn.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE secret(x);"
                 "INSERT INTO items VALUES (1, 'a');")
    conn.close()
    key = tmp_path / "key"
    key.write_bytes(SECRET)
    registry = CollectorRegistry()
    app = create_app(ServerConfig(db_dsn=str(db), allow_tables=("items",),
                                  auth_token_file=str(key)), metrics_registry=registry)
    token = jwt.encode({"sub": "t", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return app.test_client(), registry, {"Authorization": f"Bearer {token}"}


def test_counting_rules(app_and_metrics):
    client, registry, auth = app_and_metrics
    from prometheus_client import generate_latest

    assert client.get("/items", headers=auth).status_code == 200
    assert client.get("/items?id=eq.1", headers=auth).status_code == 200
    assert client.post("/items", json={"name": "b"}, headers=auth).status_code == 201
    assert client.get("/items", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    denied = client.get("/secret", headers=auth)  # exists, not allow-listed
    assert denied.status_code in (403, 404)
    assert client.get("/nothing", headers=auth).status_code == 404  # does not exist
    client.get("/live")
    client.get("/", headers=auth)
    text = generate_latest(registry).decode()
    assert value(text, "sqlite_rest_http_requests_total", target="items",
                 operation="queryTableOrView", http_code="200") == 2
    assert value(text, "sqlite_rest_http_requests_total", operation="insertTable",
                 http_code="201") == 1
    assert value(text, "sqlite_rest_http_requests_total", http_code="401") == 1
    assert value(text, "sqlite_rest_auth_failed_requests_total") == 1
    # both are outside the allow-list: the access check (as in Go) runs before the lookup
    assert value(text, "sqlite_rest_access_check_failed_requests_total") == 2
    # /live and the OpenAPI root are not table requests (the Go middleware wraps tables only)
    assert value(text, "sqlite_rest_http_requests_total") == 6
    # 404s share one target label: probing random names cannot grow the label sets
    assert value(text, "sqlite_rest_http_requests_total", target="(unknown)", http_code="404") == 2
    assert "nothing" not in text and 'target="secret"' not in text
    assert value(text, "sqlite_rest_http_request_duration_milliseconds_count", target="items") == 4


WORKER = textwrap.dedent("""
    import os, sys
    from prometheus_client import Counter
    from sqlite_rest.observability.metrics import RequestMetrics
    m = RequestMetrics()
    for _ in range(int(sys.argv[1])):
        m.observe("items", "queryTableOrView", 200, 2.0)
    m.observe("items", "insertTable", 201, 7.0, error_code=None)
    m.observe("items", "queryTableOrView", 401, 0.5, error_code="PGRST301")
    Counter("litestream_should_not_leak_total", "a parent-only family")  # filtered out
    print(os.getpid())
""")


def test_multiprocess_merge_across_worker_processes(tmp_path):
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    pids = []
    for n in (30, 12):
        out = subprocess.run([sys.executable, "-c", WORKER, str(n)], env=env, check=True,
                             capture_output=True, text=True).stdout
        pids.append(int(out))
    parent = CollectorRegistry()
    exposition = MetricsExposition(str(mpdir), registry=parent)
    text = exposition.render().decode()
    assert value(text, "sqlite_rest_http_requests_total", operation="queryTableOrView",
                 http_code="200") == 42
    assert value(text, "sqlite_rest_http_requests_total", operation="insertTable") == 2
    assert value(text, "sqlite_rest_auth_failed_requests_total") == 2
    assert value(text, "sqlite_rest_http_request_duration_milliseconds_sum",
                 operation="insertTable") == 14.0
    assert "litestream_should_not_leak" not in text
    # a dead worker's counts stay
    for pid in pids:
        mark_worker_dead(pid, str(mpdir))
    text = exposition.render().decode()
    assert value(text, "sqlite_rest_http_requests_total", operation="queryTableOrView",
                 http_code="200") == 42


TALLY_WORKER = textwrap.dedent("""
    import sys
    from prometheus_client import Counter, Histogram
    from sqlite_rest.observability import metrics
    durations = [0.0, 0.3, 1.0, 1.0000001, 2.5, 4.99, 5.0, 9.7, 250.0, 999.9, 5000.0, 5000.01,
                 1e9] * 3
    if sys.argv[1] == "tallied":
        m = metrics.RequestMetrics()
        for i, d in enumerate(durations):
            m.observe("items", "queryTableOrView", 200 if i % 2 else 201, d)
    else:  # prometheus_client's own, one value at a time
        total = Counter("http_requests_total", "Total number of HTTP requests",
                        metrics.REQUEST_LABELS, namespace=metrics.NAMESPACE)
        duration = Histogram("http_request_duration_milliseconds", "HTTP request latency",
                             metrics.REQUEST_LABELS, namespace=metrics.NAMESPACE,
                             buckets=metrics.DURATION_BUCKETS_MS)
        for i, d in enumerate(durations):
            labels = ("items", "queryTableOrView", "200" if i % 2 else "201")
            total.labels(*labels).inc()
            duration.labels(*labels).observe(d)
""")


def test_tallies_write_what_observing_one_value_at_a_time_writes(tmp_path):
    """RequestMetrics writes its tallies through prometheus_client's private histogram fields
    (metrics.RequestMetrics.flush), into the multiprocess files a worker writes: the supervisor
    must read exactly what Histogram.observe would have written, bucket by bucket."""
    texts = {}
    for mode in ("tallied", "one_by_one"):
        mpdir = tmp_path / mode
        mpdir.mkdir()
        subprocess.run([sys.executable, "-c", TALLY_WORKER, mode], check=True,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)})
        text = MetricsExposition(str(mpdir), registry=CollectorRegistry()).render().decode()
        texts[mode] = {k: v for k, v in samples(text).items()
                       if k[0].startswith("sqlite_rest_http_request")}
    assert texts["tallied"] == texts["one_by_one"]
    assert value_of(texts["tallied"], "sqlite_rest_http_request_duration_milliseconds_bucket",
                    le="1.0", http_code="201") == 5  # 0.0, 0.3, 1.0 at even positions
    assert sum(v for (n, _), v in texts["tallied"].items()
               if n == "sqlite_rest_http_requests_total") == 39


def value_of(found: dict, name, **labels):
    return sum(v for (n, ls), v in found.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


FLOOD_WORKER = textwrap.dedent("""
    import sys, time
    from sqlite_rest.observability import metrics
    m = metrics.RequestMetrics()
    writes = []
    write = m.flush
    m.flush = lambda: (writes.append(1), write())
    for _ in range(1000):
        m.observe("items", "queryTableOrView", 200, 2.0)
    time.sleep(metrics.FLUSH_INTERVAL_S * 6)
    print(len(writes), flush=True)
    sys.stdin.read()  # alive (no exit-time write) until the parent has read the files
""")


def test_a_worker_writes_its_tallies_soon_and_in_few_writes(tmp_path):
    """A burst of 1,000 requests reaches the worker's files while it lives, in a few writes
    (not one per request: the point of tallying, #11)."""
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    child = subprocess.Popen([sys.executable, "-c", FLOOD_WORKER], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)})
    try:
        writes = int(child.stdout.readline())
        text = MetricsExposition(str(mpdir), registry=CollectorRegistry()).render().decode()
        assert value(text, "sqlite_rest_http_requests_total", target="items") == 1000
        assert value(text, "sqlite_rest_http_request_duration_milliseconds_sum") == 2000.0
        assert 1 <= writes <= 3, writes
    finally:
        child.stdin.close()
        child.wait(timeout=10)


FORKED_WORKER = textwrap.dedent("""
    import multiprocessing
    from sqlite_rest.observability import metrics

    def serve():  # a granian worker is a forked multiprocessing child, ended by os._exit
        m = metrics.RequestMetrics()
        for _ in range(100):
            m.observe("items", "queryTableOrView", 200, 2.0)

    child = multiprocessing.get_context("fork").Process(target=serve)
    child.start()
    child.join()
    assert child.exitcode == 0
""")


def test_a_worker_that_stops_writes_its_last_counts(tmp_path):
    """A multiprocessing child never runs atexit: a graceful stop within FLUSH_INTERVAL_S of
    the last requests lost their counts until the exit-time write was a multiprocessing
    finalizer too (logs.at_process_exit)."""
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    subprocess.run([sys.executable, "-c", FORKED_WORKER], check=True,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)})
    text = MetricsExposition(str(mpdir), registry=CollectorRegistry()).render().decode()
    assert value(text, "sqlite_rest_http_requests_total", target="items") == 100
