"""The real postgrest-js (Supabase's PostgREST client for JavaScript), run by Node.

- ``postgrest_js``: the ``node_modules`` directory holding ``@supabase/postgrest-js``
  `POSTGREST_JS_VERSION`, installed on first use with ``npm install --prefix
  .tools/postgrest-js-<version>`` (``.tools/`` is git-ignored; `.ci/run` installs it up front)
  and reused afterwards. Run a CommonJS script with it as ``NODE_PATH``: `run_node`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The newest release that still runs on Node 20 (later ones ask for Node 22).
POSTGREST_JS_VERSION = "2.90.0"


def postgrest_js_dir(version: str = POSTGREST_JS_VERSION) -> Path:
    """``node_modules`` with ``@supabase/postgrest-js`` ``version``, installed on first use."""
    npm = shutil.which("npm")
    assert npm, "postgrest-js needs Node and npm on PATH (.ci/run installs them)"
    target = REPO / ".tools" / f"postgrest-js-{version}"
    package = target / "node_modules" / "@supabase" / "postgrest-js" / "package.json"
    if not package.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(target), "--no-save", "--no-audit",
                        "--no-fund", "--loglevel=error", f"@supabase/postgrest-js@{version}"],
                       check=True, timeout=600, capture_output=True)
    found = json.loads(package.read_text())["version"]
    assert found == version, f"expected postgrest-js {version}, found {found!r}"
    return target / "node_modules"


@pytest.fixture(scope="session")
def postgrest_js() -> Path:
    return postgrest_js_dir()


def run_node(node_modules: Path, script: Path, *args: str, timeout: float = 60) -> dict:
    """Run a Node script that prints one JSON document; its parsed output."""
    node = shutil.which("node")
    assert node, "postgrest-js needs Node on PATH (.ci/run installs it)"
    env = dict(os.environ, NODE_PATH=str(node_modules))
    proc = subprocess.run([node, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
