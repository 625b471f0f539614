"""infra/terraform checked offline: fmt, init from the local provider mirror, validate,
`terraform test` with a mocked AWS provider, the outputs against adapters/settings.py,
and checkov."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from adapters.settings import PREFIX, SECRETS, Settings

from .tools import TERRAFORM_DIR, Terraform, checkov, terraform_in

WIRING_RUNS = (
    "workers_get_brokers_and_secrets",
    "production_mode_with_every_secret",
    "a_bad_webhook_key_is_refused",
    "a_managed_registry_needs_its_password",
    "security_groups_allow_only_needed_ports",
    "api_only_through_the_alb",
    "managed_registry_url_replaces_the_registry_service",
    "more_workers_than_partitions_is_refused",
    "small_size_plans",
)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    terraform = terraform_in(tmp_path_factory.mktemp("tf"))
    out = _ok(terraform.run("init", "-backend=false", "-input=false"))
    # From the mirror, at the pinned version: nothing was fetched from a registry.
    assert "hashicorp/aws v5.100.0" in out, out
    return terraform


def test_fmt(tf: Terraform) -> None:
    result = tf.run("fmt", "-check", "-recursive", "-diff")
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def test_validate(tf: Terraform) -> None:
    assert "The configuration is valid" in _ok(tf.run("validate"))


def test_wiring_with_mocked_provider(tf: Terraform) -> None:
    out = _ok(tf.run("test", "-filter=tests/wiring.tftest.hcl"))
    for run in WIRING_RUNS:
        assert f'run "{run}"... pass' in out, out
    assert f"Success! {len(WIRING_RUNS)} passed, 0 failed." in out, out


def _settings_test(names: list[str], required: list[str], secrets: list[str]) -> str:
    """A run block comparing the outputs' keys with the settings, on wiring's mocks."""
    wiring = (TERRAFORM_DIR / "tests" / "wiring.tftest.hcl").read_text()
    mocks = wiring[: wiring.index("\nrun ")]
    listing = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return f"""{mocks}
run "outputs_are_settings" {{
  command = apply

  assert {{
    condition = alltrue([
      for k in concat(keys(output.leadscore_environment), keys(output.leadscore_secrets)) :
      contains({listing(names)}, k)
    ])
    error_message = "an output is not a LEADSCORE_* setting of adapters/settings.py"
  }}
  assert {{
    condition = alltrue([
      for k in {listing(required)} :
      contains(concat(keys(output.leadscore_environment), keys(output.leadscore_secrets)), k)
    ])
    error_message = "a setting that names a service endpoint is missing from the outputs"
  }}
  assert {{
    condition = alltrue([
      for k in {listing(secrets)} : contains(keys(output.leadscore_secrets), k)
    ])
    error_message = "a secret production requires is not in leadscore_secrets"
  }}
  assert {{
    condition = length(setintersection(
      keys(output.leadscore_environment), keys(output.leadscore_secrets)
    )) == 0
    error_message = "a setting is both a plain variable and a secret"
  }}
  assert {{
    condition = alltrue([
      for svc, defs in module.services.task_definitions :
      alltrue([
        for e in concat(defs[0].environment, defs[0].secrets) : contains({listing(names)}, e.name)
      ])
    ])
    error_message = "a task definition sets a LEADSCORE_* variable that is not a setting"
  }}
}}
"""


def _production_secrets() -> list[str]:
    """The secret settings production refuses to start without, with SASL on as in AWS."""
    aws = Settings(kafka_security_protocol="SASL_SSL")
    return sorted(PREFIX + s.setting.upper() for s in SECRETS if s.applies(aws))


def _setting_names() -> tuple[list[str], list[str]]:
    names = sorted(PREFIX + f.name.upper() for f in fields(Settings))
    defaults = Settings()
    # Settings whose default points at the local dev stack must be set for the cloud one.
    local = re.compile(r"127\.0\.0\.1|localhost|chdb://|/\.run\b")
    required = sorted(
        PREFIX + f.name.upper()
        for f in fields(Settings)
        if local.search(str(getattr(defaults, f.name)))
    )
    return names, required


def _run_settings_test(
    tf: Terraform, names: list[str], required: list[str], secrets: list[str] | None = None
) -> str:
    path = tf.workdir / "tests" / "settings.tftest.hcl"
    path.write_text(_settings_test(names, required, secrets or _production_secrets()))
    try:
        result = tf.run("test", "-filter=tests/settings.tftest.hcl")
    finally:
        path.unlink()
    return result.stdout + result.stderr


def test_outputs_are_exactly_the_settings(tf: Terraform) -> None:
    names, required = _setting_names()
    assert {"LEADSCORE_KAFKA_BOOTSTRAP", "LEADSCORE_PG_DSN", "LEADSCORE_REDIS_URL"} <= set(required)
    out = _run_settings_test(tf, names, required)
    assert 'run "outputs_are_settings"... pass' in out, out


def test_every_secret_production_requires_is_a_secret_output(tf: Terraform) -> None:
    """LEADSCORE_ENVIRONMENT=production refuses to start without these (settings.SECRETS)."""
    secrets = _production_secrets()
    assert {
        "LEADSCORE_PG_DSN",
        "LEADSCORE_API_PG_DSN",
        "LEADSCORE_WEBHOOK_SECRET_KEY",
        "LEADSCORE_SCHEMA_REGISTRY_PASSWORD",
        "LEADSCORE_KAFKA_SASL_PASSWORD",
    } <= set(secrets)
    names, required = _setting_names()
    out = _run_settings_test(tf, names, required, secrets)
    assert 'run "outputs_are_settings"... pass' in out, out
    # ... and the check bites: a new secret setting not in Secrets Manager fails it.
    out = _run_settings_test(tf, names, required, [*secrets, "LEADSCORE_API_METRICS_TOKEN"])
    assert 'run "outputs_are_settings"... fail' in out, out
    assert "a secret production requires is not in leadscore_secrets" in out, out


def test_a_renamed_setting_fails_the_comparison(tf: Terraform) -> None:
    """The comparison bites: settings.py without kafka_bootstrap (renamed, say) fails it."""
    names, required = _setting_names()
    renamed = [n for n in names if n != "LEADSCORE_KAFKA_BOOTSTRAP"] + ["LEADSCORE_KAFKA_BROKERS"]
    out = _run_settings_test(tf, renamed, required)
    assert 'run "outputs_are_settings"... fail' in out, out
    assert "an output is not a LEADSCORE_* setting" in out, out


def test_checkov_has_no_unexplained_findings(tmp_path: Path) -> None:
    scanned = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, scanned, ignore=shutil.ignore_patterns(".terraform"))
    result = subprocess.run(
        [str(checkov()), "-d", str(scanned), "--framework", "terraform",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    assert report["summary"]["parsing_errors"] == 0, result.stderr
    assert report["summary"]["passed"] > 100, report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov findings to fix or skip with a reason:\n" + "\n".join(failed)
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in report["results"]["skipped_checks"]
        if len((c["check_result"].get("suppress_comment") or "").split()) < 5
    ]
    assert not unexplained, f"skips without a reason: {unexplained}"
