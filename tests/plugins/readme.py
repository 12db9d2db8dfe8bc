"""Running the README's examples as written: its fenced blocks, and its curl lines against a
real server, each answering the status its comment states (2xx when it states none)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def block(after: str, fence: str) -> str:
    """The first ```fence block after the text ``after``."""
    text = README.read_text()
    start = text.index(after)
    m = re.compile(rf"^```{fence}\n(.*?)^```", re.S | re.M).search(text, start)
    assert m, f"README: no ```{fence} block after {after!r}"
    return m.group(1)


def run_curl_lines(script: str, base_url: str, env=None) -> int:
    """Run every curl command of ``script`` against ``base_url`` (for localhost:8080); each
    must answer the status its ``# NNN`` comment names, else a 2xx. Returns how many ran."""
    host = base_url.removeprefix("http://")
    ran = 0
    for command in re.split(r"(?<!\\)\n", script.strip()):
        if not command.startswith("curl"):
            continue
        comment = command.rsplit("#", 1)[1] if " # " in command else ""
        run = subprocess.run(
            ["bash", "-c", command.replace("localhost:8080", host).replace(
                "curl ", "curl -s -o /dev/null -w '%{http_code}' ", 1)],
            capture_output=True, text=True, timeout=30, env=env)
        status = int(run.stdout)
        m = re.match(r"\s*(\d{3})\b", comment)
        if m:
            assert status == int(m.group(1)), (command, status)
        else:
            assert 200 <= status < 300, (command, status)
        ran += 1
    return ran
