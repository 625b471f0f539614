"""docs/settings.md lists exactly the settings adapters/settings.py reads."""

from __future__ import annotations

import dataclasses

from adapters.settings import PREFIX, ROOT, Settings
from leadscore.settings_doc import render


def test_the_settings_page_is_generated_from_the_settings() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == render(), "run: python -m leadscore.settings_doc > docs/settings.md"


def test_every_setting_has_a_row_and_a_description() -> None:
    page = render()
    for f in dataclasses.fields(Settings):
        assert f"`{PREFIX}{f.name.upper()}`" in page
    undocumented = [
        line for line in page.splitlines() if line.startswith("| `") and line.endswith("|  |")
    ]
    assert len(undocumented) < len(dataclasses.fields(Settings))  # most say what they do
