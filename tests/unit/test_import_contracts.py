"""The architecture's import rules hold (.importlinter, checked with import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from leadscore.settings import ROOT


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
    assert "2 kept, 0 broken" in done.stdout


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
