"""A machine without terraform or the provider mirror fails the infra tests, saying which."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tools import AWS_PROVIDER, provider_mirror, terraform_binary


def test_a_missing_mirror_fails_with_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSCORE_TF_PROVIDER_MIRROR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="no filesystem mirror of the AWS provider"):
        provider_mirror()


def test_the_mirror_is_found_where_the_override_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / AWS_PROVIDER).mkdir(parents=True)
    monkeypatch.setenv("LEADSCORE_TF_PROVIDER_MIRROR", str(tmp_path))
    assert provider_mirror() == tmp_path


def test_a_missing_terraform_fails_with_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADSCORE_TERRAFORM", str(tmp_path / "terraform"))
    with pytest.raises(pytest.fail.Exception, match="terraform is not installed"):
        terraform_binary()
