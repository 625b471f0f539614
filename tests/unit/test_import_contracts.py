"""The architecture's import rules hold (.importlinter, checked with import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from adapters.settings import ROOT

# Our top-level packages, top layer first (the layers contract in .importlinter).
PACKAGES = ("leadscore", "devtools", "streams", "query_api", "projections", "adapters", "domain")


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is a dev dependency (make venv)"
    return subprocess.run(
        [exe, "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept() -> None:
    done = lint_imports(ROOT / ".importlinter")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """domain does import the eventsourcing library: forbidding it must be reported."""
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    domain\ninclude_external_packages = True\n\n"
        "[importlinter:contract:no-eventsourcing]\nname = domain without eventsourcing\n"
        "type = forbidden\nsource_modules =\n    domain\n"
        "forbidden_modules =\n    eventsourcing\n"
    )
    done = lint_imports(config)
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout


def package_graph() -> dict[str, set[str]]:
    """Top-level package → the top-level packages of ours its modules import."""
    graph = grimp.build_graph(*PACKAGES)
    edges: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = module.split(".")[0], imported.split(".")[0]
            if a != b:
                edges[a].add(b)
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += edges[node]
    return seen


def package_cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of packages that each reach the other: one per package cycle's pair of ends."""
    return sorted(
        (a, b) for a in edges for b in reachable(edges, a) if a < b and a in reachable(edges, b)
    )


def test_no_package_imports_itself_through_another() -> None:
    edges = package_graph()
    assert package_cycles(edges) == []
    # The graph is real: the composition root reaches every layer, domain reaches none.
    assert reachable(edges, "leadscore") == set(PACKAGES) - {"leadscore"}
    assert edges["domain"] == set()


def test_the_cycle_check_sees_a_cycle() -> None:
    edges = package_graph()
    edges["adapters"].add("streams")  # what bootstrap -> processor -> the store once was
    assert ("adapters", "streams") in package_cycles(edges)
