"""Crash torture (issue #9): SIGKILL a replicating server under a write flood, again and again,
on a file and an S3 replica; nothing acknowledged may be lost (tests/plugins/crash.py).
bench/bench_crash.py runs the same harness for hundreds of trials."""
from __future__ import annotations

import os

import pytest

from tests.plugins.crash import Torture, plan
from tests.plugins.replicas import file_replica, s3_replica

#: Trials per backend in CI: each target with and without a lost database, several times.
TRIALS = int(os.environ.get("SQLITEREST_TORTURE_TRIALS", "16"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_sigkill_under_a_write_flood_loses_no_acknowledged_write(
        backend, tmp_path, litestream_env, litestream_bin, request):
    replica = (file_replica(tmp_path, litestream_env) if backend == "file"
               else s3_replica(request.getfixturevalue("s3_server")))
    torture = Torture(tmp_path, replica, seed=hash(backend) & 0xffff)
    failures = []
    try:
        for number, (target, lost_db) in enumerate(plan(TRIALS, seed=7)):
            result = torture.trial(number, target, lost_db)
            if not result.ok:
                failures.append(result)
        served, restored = torture.finish(litestream_bin)
    finally:
        torture.close()
    assert not failures, failures
    assert served == restored, (len(served - restored), len(restored - served))
    assert sum(1 for _ in served) > 0
