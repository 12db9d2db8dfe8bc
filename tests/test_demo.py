"""`sqlite-rest demo`: the README's first command — serve a demo DB replicated to a local
directory; delete the DB and it is restored from the replica on the next start."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.plugins.server import free_ports


def start_demo(directory):
    http, metrics = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_rest.cli", "demo", str(directory),
         "--http-addr", f"127.0.0.1:{http}", "--metrics-addr", f"127.0.0.1:{metrics}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{metrics}/ready", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{http}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("demo did not become ready: " + proc.stdout.read())


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_serves_replicates_and_restores(tmp_path):
    directory = tmp_path / "demo"
    proc, url = start_demo(directory)
    try:
        books = httpx.get(f"{url}/books?select=title&author_id=eq.1&order=year").json()
        assert [b["title"] for b in books] == ["A Wizard of Earthsea", "The Left Hand of Darkness"]
        r = httpx.post(f"{url}/books", json={"title": "The Dispossessed", "author_id": 1,
                                             "year": 1974})
        assert r.status_code == 201 and len(r.headers["X-Replication-Txid"]) == 16
    finally:
        assert stop(proc) == 0
    for suffix in ("", "-wal", "-shm"):
        path = directory / f"demo.db{suffix}"
        if path.exists():
            os.unlink(path)
    proc, url = start_demo(directory)
    try:
        titles = [b["title"] for b in httpx.get(f"{url}/books?author_id=eq.1").json()]
        assert "The Dispossessed" in titles and len(titles) == 3
    finally:
        assert stop(proc) == 0


# -- the README's curl examples, run as written against the demo ---------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
README_URL = "localhost:8080"
#: A status at the start of a trailing comment (`# 206, …`) and headers in it (`Name: value`).
_STATUS = re.compile(r"#\s*([1-5][0-9]{2})\b")
_HEADER = re.compile(r"\b([A-Z][A-Za-z]*(?:-[A-Z][A-Za-z]*)*): (\S+)")


def readme_curl_commands() -> list[tuple[str, str]]:
    """(command, its trailing comment) for every curl command in the README's ``sh`` blocks,
    in README order; a command continues over lines ending in a backslash."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", README.read_text(),
                            re.S | re.M):
        lines = iter(block.splitlines())
        for line in lines:
            command = line
            while command.endswith("\\"):
                command += "\n" + next(lines)
            if not command.lstrip().startswith("curl "):
                continue
            last = command.rsplit("\n", 1)[-1]
            comment = last[last.index(" #"):].strip() if " #" in last else ""
            commands.append((command, comment))
    return commands


def expectations(comment: str) -> tuple[int | None, dict[str, str]]:
    status = _STATUS.match(comment)
    return (int(status.group(1)) if status else None,
            {name.lower(): value for name, value in _HEADER.findall(comment)})


def test_the_readme_functions_file_is_the_demos():
    """The README's example functions file is the one the demo serves (and its curl examples
    call)."""
    from sqlite_rest.demo import FUNCTIONS

    blocks = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.S | re.M)
    assert FUNCTIONS in blocks


def test_readme_comment_expectations_are_read():
    assert expectations("# 206, Content-Range: 0-1/5") == (206, {"content-range": "0-1/5"})
    assert expectations("# 201, Location: /books?id=eq.8") == (201, {"location": "/books?id=eq.8"})
    assert expectations("# OpenAPI (Swagger 2.0)") == (None, {})


def test_every_readme_curl_example_runs_against_the_demo(tmp_path):
    """Each example, as written, with the real curl (bash -c) against one demo DB in README
    order: exit 0, a 2xx, and the status and headers its comment states."""
    curl = shutil.which("curl")
    assert curl, "the README's examples need curl on PATH (.ci/run installs it)"
    commands = readme_curl_commands()
    assert len(commands) >= 13, commands
    proc, url = start_demo(tmp_path / "demo")
    host = url.removeprefix("http://")
    headers_file, body_file = tmp_path / "headers", tmp_path / "body"
    # The README's own command line, unchanged but for the port; the function adds what the
    # test reads (status, headers, body) to the real curl's arguments.
    prelude = (f"curl() {{ command {shlex.quote(curl)} -sS -D {shlex.quote(str(headers_file))} "
               f"-o {shlex.quote(str(body_file))} -w '%{{http_code}}' \"$@\"; }}\n")
    try:
        for command, comment in commands:
            assert README_URL in command, command
            run = subprocess.run(["bash", "-c", prelude + command.replace(README_URL, host)],
                                 capture_output=True, text=True, timeout=60)
            body = body_file.read_bytes() if body_file.exists() else b""
            where = f"{command}\n-> exit {run.returncode}, {run.stdout!r} {run.stderr!r} {body[:300]!r}"
            assert run.returncode == 0, where
            status = int(run.stdout)
            assert 200 <= status < 300, where
            # -D holds every response's headers; the last block is the final response's.
            block = headers_file.read_text().strip().split("\r\n\r\n")[-1]
            got = {}
            for line in block.splitlines()[1:]:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
            want_status, want_headers = expectations(comment)
            if want_status is not None:
                assert status == want_status, where
            for name, value in want_headers.items():
                assert got.get(name) == value, (name, got, where)
            # "Every write response carries …" (not a read-only call, nor a rolled back one)
            if "no txid" in comment:
                assert "x-replication-txid" not in got, (got, where)
            elif " -d " in command or " -X " in command:
                assert len(got.get("x-replication-txid", "")) == 16, (got, where)
            headers_file.unlink()
            body_file.unlink(missing_ok=True)
    finally:
        assert stop(proc) == 0
