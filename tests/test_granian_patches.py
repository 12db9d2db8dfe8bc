"""The granian internals sqlite_rest/process/http_server.py relies on are still there (setup.cfg pins the
range; a new release that moves them fails here, by name, instead of hanging a shutdown)."""
from __future__ import annotations

import inspect

import granian
import granian._signals as granian_signals
from granian.server import Server
from granian.server.common import AbstractServer


def test_the_pinned_granian_is_installed():
    major, minor = (int(x) for x in granian.__version__.split(".")[:2])
    assert (major, minor) == (2, 8), granian.__version__


def test_the_signal_installer_we_wrap_exists():
    # _make_worker_stop_reliable replaces it to run granian's stop handler once.
    assert inspect.isfunction(granian_signals.set_sync_signals)
    assert not inspect.signature(granian_signals.set_sync_signals).parameters


def test_the_master_methods_and_state_we_extend_exist():
    # SqliteRestGranian overrides these two and reads these attributes.
    respawn = inspect.signature(Server._respawn_workers)
    assert list(respawn.parameters)[:4] == ["self", "workers", "spawn_target", "target_loader"]
    assert "exit_code" in inspect.signature(Server.shutdown).parameters
    source = inspect.getsource(AbstractServer) + inspect.getsource(Server)
    for attribute in ("self.interrupt_children", "self.wrks", "self._sso"):
        assert attribute in source, attribute
