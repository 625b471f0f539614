"""Loading the scoring rules: config/scoring/default.yaml and one file per org.

``<org_id>.yaml`` replaces the default for that org (no merging: an org's file says all
of its rules). Files are read once at start; a file that does not parse or validate
stops the start with its path and the problem, rather than scoring without it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from domain.rules import NO_RULES, RulesError, ScoringRules, parse

DEFAULT = "default"


class RuleBook:
    def __init__(self, by_org: dict[str, ScoringRules], default: ScoringRules = NO_RULES):
        self.by_org = by_org
        self.default = default

    def __call__(self, org_id: str) -> ScoringRules:
        return self.by_org.get(org_id, self.default)

    @classmethod
    def load(cls, directory: Path) -> RuleBook:
        rules: dict[str, ScoringRules] = {}
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.json")):
                rules[path.stem] = load_file(path)
        default = rules.pop(DEFAULT, NO_RULES)
        return cls(rules, default)


def load_file(path: Path) -> ScoringRules:
    try:
        doc = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, str(path))
