"""The wheel's build: setuptools as pyproject.toml configures it, plus the engine's data
folders (schemas/avro, models/onnx, config/) copied into the package as
``adapters/_bundled``, where ``adapters.settings.bundled`` finds them with
importlib.resources. A checkout (and an editable install) reads the folders in place."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA = ("schemas/avro", "models/onnx", "config")


def data_files() -> list[Path]:
    """The data folders' files: those git tracks (no model trained locally and left
    uncommitted rides along), or all of them in an sdist, which has no .git."""
    if (HERE / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *DATA],
            cwd=HERE, capture_output=True, check=True,
        )  # fmt: skip
        return [Path(p) for p in out.stdout.decode().split("\0") if p]
    return [p.relative_to(HERE) for d in DATA for p in (HERE / d).rglob("*") if p.is_file()]


class BuildWithData(build_py):
    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)
        if not editable:
            # A build/ left by an earlier build would carry modules moved or deleted since.
            shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()
        if editable:
            return
        target = Path(self.build_lib) / "adapters" / "_bundled"
        for rel in data_files():
            if "__pycache__" in rel.parts:
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HERE / rel, target / rel)


setup(cmdclass={"build_py": BuildWithData})
