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
    def __init__(
        self,
        by_org: dict[str, ScoringRules],
        default: ScoringRules = NO_RULES,
        texts: dict[str, str] | None = None,
    ):
        self.by_org = by_org
        self.default = default
        self.texts = texts or {}  # file name stem -> the file as read, for the registry

    def sources(self) -> list[tuple[str, ScoringRules, str]]:
        """(org or "default", rules, file text) of every file read."""
        rules = {**self.by_org, DEFAULT: self.default}
        return [(name, rules[name], text) for name, text in self.texts.items()]

    def __call__(self, org_id: str) -> ScoringRules:
        return self.by_org.get(org_id, self.default)

    @classmethod
    def load(cls, directory: Path) -> RuleBook:
        rules: dict[str, ScoringRules] = {}
        texts: dict[str, str] = {}
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.json")):
                texts[path.stem] = path.read_text()
                rules[path.stem] = load_file(path, texts[path.stem])
        default = rules.pop(DEFAULT, NO_RULES)
        return cls(rules, default, texts)


def load_file(path: Path, text: str | None = None) -> ScoringRules:
    try:
        doc = yaml.safe_load(path.read_text() if text is None else text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, str(path))
