"""The README's reference tables, generated from the declarative tables the code runs on.

``python -m sqlite_rest.docs`` rewrites every ``<!-- BEGIN generated:NAME -->`` …
``<!-- END generated:NAME -->`` block of README.md; ``tests/test_docs.py`` fails when the README
and the code disagree, so the docs cannot drift from the operators, Prefer keys, error codes
and flags that requests actually meet.
"""
from __future__ import annotations

import os
import re
import sys


def flags_markdown(flags) -> str:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in flags:
        env = f.env
        default = f.default
        if default in (None, (), ""):
            default = "—" if default is None or default == () else "`\"\"`"
        else:
            default = f"`{default}`"
        rows.append(f"| `--{f.name}` | `{env}` | {default} | {f.help} |")
    return "\n".join(rows)


def sections() -> dict[str, str]:
    from .cli import COMMON_FLAGS, MIGRATE_FLAGS, SERVE_FLAGS
    from .errors import errors_markdown
    from .api.operators import operators_markdown
    from .api.functions import functions_markdown
    from .api.prefer import preferences_markdown
    from .auth.policy import permissions_markdown
    from .api.relationships_file import relationships_markdown

    return {
        "operators": operators_markdown(),
        "prefer": preferences_markdown(),
        "errors": errors_markdown(),
        "serve-flags": flags_markdown(COMMON_FLAGS + SERVE_FLAGS),
        "migrate-flags": flags_markdown(MIGRATE_FLAGS),
        "functions-file": functions_markdown(),
        "permissions-file": permissions_markdown(),
        "relationships-file": relationships_markdown(),
    }


_BLOCK = re.compile(r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(.*?)(<!-- END generated:(?P=name) -->)",
                    re.S)


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    generated = sections()

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in generated:
            raise KeyError(f"README names an unknown generated block {name!r}")
        return f"{m.group(1)}{generated[name].rstrip()}\n{m.group(4)}"

    return _BLOCK.sub(replace, text)


def main() -> int:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = render(text)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
