"""docs/settings.md, generated from adapters/settings.py: every setting, its environment
variable, type, default and the comment beside it in the source.

    python -m leadscore.settings_doc > docs/settings.md

tests/unit/test_settings_doc.py fails when the committed file and the settings diverge.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize

from adapters import settings as settings_module
from adapters.settings import PREFIX, ROOT, Settings

HEADER = """# Settings

Every setting is read once from the environment, prefix `LEADSCORE_`
(`adapters/settings.py`). This page is generated from that file
(`python -m leadscore.settings_doc > docs/settings.md`); a test fails when they differ.

| variable | type | default | what it does |
|---|---|---|---|
"""


def _comments() -> dict[str, str]:
    """Per field: the comment lines just above it and the comment at its line's end."""
    source = inspect.getsource(settings_module)
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    tree = ast.parse(source)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    out: dict[str, str] = {}
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        line = node.lineno
        above: list[str] = []
        i = line - 1
        while i >= 1 and lines[i - 1].strip().startswith("#"):
            above.insert(0, comments.get(i, ""))
            i -= 1
        group = " ".join(above)
        trailing = comments.get(line, "") if "#" in lines[line - 1] else ""
        out[node.target.id] = " ".join(part for part in (group, trailing) if part)
    return out


def _default(f: dataclasses.Field[object]) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    text = str(value).replace(str(ROOT), "<checkout>")
    return f"`{text}`" if text != "" else "(empty)"


def render() -> str:
    notes = _comments()
    rows = []
    for f in dataclasses.fields(Settings):
        what = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{PREFIX}{f.name.upper()}` | {f.type} | {_default(f)} | {what} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
