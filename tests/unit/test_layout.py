"""The suite's layout: shared helpers live in tests/support, and no module under tests/
or bench/ imports a test module (a ``test_*`` module under tests/), in any import form."""

from __future__ import annotations

import ast
from pathlib import Path

from adapters.settings import ROOT

SCANNED = ("tests", "bench")


def is_test_module(name: str) -> bool:
    """``tests.<...>.test_<...>`` (or something inside one): a module pytest collects."""
    parts = name.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") for p in parts[1:])


def imported_test_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for each test module ``source`` imports, ``package`` being the dotted
    package the source sits in (for relative imports): ``import``, ``from ... import``,
    relative forms, and ``importlib.import_module`` / ``__import__`` with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from tests.integration import test_pipeline` imports the module itself.
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                found.append((node.lineno, arg.value))
    offenders = sorted({(line, m) for line, m in found if is_test_module(m)})
    # `from tests.x.test_y import a` names the module and a: report the module once.
    return [
        (line, m)
        for line, m in offenders
        if not any(o_line == line and m.startswith(o + ".") for o_line, o in offenders)
    ]


def python_files() -> list[Path]:
    return sorted(
        p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts
    )


def test_no_module_under_tests_or_bench_imports_a_test_module() -> None:
    files = python_files()
    # The scan sees the suite itself (this file, the support modules), not an empty tree.
    assert Path(__file__).resolve() in files
    assert (ROOT / "tests" / "support" / "pipeline.py") in files
    offenders = []
    for path in files:
        rel = path.relative_to(ROOT)
        package = ".".join(rel.parent.parts)
        for line, module in imported_test_modules(path.read_text(), package):
            offenders.append(f"{rel}:{line} imports {module}")
    assert offenders == [], (
        "test modules are not libraries: move the shared helper to tests/support/ "
        "(fixtures to a conftest.py) and import it from there:\n" + "\n".join(offenders)
    )


def test_every_form_of_importing_a_test_module_is_found() -> None:
    source = "\n".join(
        [
            "import tests.integration.test_pipeline",  # 1
            "from tests.integration.test_api import Api, live_api",  # 2
            "from tests.integration import test_pipeline",  # 3
            "from . import test_worker",  # 4
            "from .test_worker import start",  # 5
            "from ..integration.test_projections import expected_state",  # 6
            "def helper():",
            "    from tests.unit.test_explain import V1",  # 8
            "import importlib",
            "m = importlib.import_module('tests.unit.test_validation')",  # 10
            "n = __import__('tests.e2e.test_split')",  # 11
        ]
    )
    assert imported_test_modules(source, "tests.e2e") == [
        (1, "tests.integration.test_pipeline"),
        (2, "tests.integration.test_api"),
        (3, "tests.integration.test_pipeline"),
        (4, "tests.e2e.test_worker"),
        (5, "tests.e2e.test_worker"),
        (6, "tests.integration.test_projections"),
        (8, "tests.unit.test_explain"),
        (10, "tests.unit.test_validation"),
        (11, "tests.e2e.test_split"),
    ]


def test_helpers_and_outside_modules_are_not_test_modules() -> None:
    source = "\n".join(
        [
            "import tests.support.pipeline",
            "from tests.support.api import Api, live_api",
            "from tests.support import worker",
            "from tests.support.factories import created",
            "from tests import factories",
            "from . import tools",
            "from ..support.readmodels import expected_state",
            "import test_helpers_outside_tests",
            "from testing_lib.test_x import y",
            "from domain.lead import Lead",
            "import importlib",
            "m = importlib.import_module('tests.support.models')",
        ]
    )
    assert imported_test_modules(source, "tests.infra") == []
