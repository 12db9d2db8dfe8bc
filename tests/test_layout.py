"""The house rules the layout promises (README "Where things are", design/README.md), checked
on the source so a change that breaks one fails here by name."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def sources(package: str):
    return sorted((REPO / package).rglob("*.py"))


def test_the_web_side_uses_only_the_replication_facade_and_its_errors():
    allowed = ("replication.primary", "replication.errors", "replication.cmd")
    for path in sources("sqlite_rest"):
        for name in imports(path):
            if name == "replication" or name.startswith("replication."):
                assert name.startswith(allowed), f"{path.relative_to(REPO)} imports {name}"


def test_the_replication_core_is_usable_without_the_server():
    for path in sources("replication"):
        for name in imports(path):
            root = name.split(".")[0]
            assert root not in ("sqlite_rest", "flask", "granian"), \
                f"{path.relative_to(REPO)} imports {name}"


def test_views_never_import_the_app_factory():
    factory_users = {"cli.py", "app.py", "http_server.py"}
    for path in sources("sqlite_rest"):
        if path.name in factory_users:
            continue
        assert "sqlite_rest.app" not in imports(path), f"{path.relative_to(REPO)} imports the factory"


def test_a_test_that_reads_beside_the_repository_fails_the_session(tmp_path):
    """tests/plugins/inside.py: a user's clone has nothing beside it (no ../shared)."""
    import subprocess
    import sys

    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "def test_reads_beside():\n"
        f"    try:\n        open({str(REPO.parent / 'not-in-this-repository.txt')!r})\n"
        "    except OSError:\n        pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.plugins.inside", str(probe)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "read outside the repository" in proc.stderr
    assert "not-in-this-repository.txt" in proc.stderr
