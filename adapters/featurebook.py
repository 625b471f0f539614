"""Loading feature specs: config/features/default.yaml and one file per org.

``<org_id>.yaml`` replaces the default for that org. Training reads the spec of the org
it trains for; the trained model carries the spec (with its vocabularies) from then on,
so scoring never reads these files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from domain.featurespec import DEFAULT_SPEC, FeatureSpec, FeatureSpecError, parse

DEFAULT = "default"


def spec_path(directory: Path, org: str | None) -> Path | None:
    """The file that holds ``org``'s spec: its own, else the default; None if neither."""
    for name in ([org] if org else []) + [DEFAULT]:
        for suffix in (".yaml", ".json"):
            path = Path(directory) / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def load_spec(directory: Path, org: str | None) -> FeatureSpec:
    """``org``'s feature spec (or the default's); the builtin features if there is no file."""
    path = spec_path(directory, org)
    return DEFAULT_SPEC if path is None else load_file(path)


def load_file(path: Path) -> FeatureSpec:
    try:
        doc = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise FeatureSpecError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, str(path))
