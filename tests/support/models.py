"""The committed model: copies of it under other versions, and v1 loaded as a scorer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from adapters.modelstore import load_scorer
from adapters.settings import ROOT
from tests.support.factories import MODEL_DIR

V1 = load_scorer(MODEL_DIR, "v1")


def copy_model(model_dir: Path, version: str, org: str | None = None) -> None:
    """The committed v1 under another version name (and, for ``org``, as that org's model)."""
    shutil.copytree(ROOT / "models" / "onnx" / "v1", model_dir / version)
    meta_path = model_dir / version / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = version
    meta["provenance"] = {"source": "test copy of v1", "org": org or "(all orgs)"}
    meta_path.write_text(json.dumps(meta))
