"""Shared pytest set-up: each plugin module owns one kind of real resource."""
import logging

import pytest

from replication.sqlite_fds import release_unused

pytest_plugins = [
    "tests.plugins.s3",          # a real SeaweedFS S3 server on 127.0.0.1
    "tests.plugins.litestream",  # the real Litestream binaries (0.5.17 and a frame-only release)
    "tests.plugins.server",      # a real `sqlite-rest serve` process on 127.0.0.1
    "tests.plugins.postgrest_js",  # the real postgrest-js (Node), installed into .tools/
    "tests.plugins.inside",      # fails the session if a test reads outside the repository
    "tests.plugins.descriptors",  # fails the session if tests leave descriptors piling up
]


@pytest.fixture(params=["file", "s3"])
def replica_client(request, tmp_path):
    """A fresh, initialised replica client of each backend (S3 on the real SeaweedFS)."""
    from replication.file_replica_client import FileReplicaClient
    from replication.replica_client import client_from_url

    if request.param == "file":
        c = FileReplicaClient(str(tmp_path / "replica"))
    else:
        s3 = request.getfixturevalue("s3_server")
        c = client_from_url(s3.url(s3.bucket, s3.new_path() + "/app/db"),
                            access_key_id=s3.access_key, secret_access_key=s3.secret_key)
    c.init()
    yield c
    c.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test (its fixtures included) leaves the root logger as it found it.
    ``cli.main()`` run in-process configures logging as the command does
    (``logs.configure``: it replaces every root handler and sets the level); a handler left
    behind wrote every later record of the session, and one bound to a test's captured
    stderr failed each ("--- Logging error ---", I/O operation on closed file)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return (yield)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        # Descriptors kept on the test's databases (replication/sqlite_fds.py) whose
        # connections are all closed: kept, they piled up past 1,000 in one session.
        release_unused()
