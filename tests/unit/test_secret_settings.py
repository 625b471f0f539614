"""Outside dev, the engine refuses to start with a secret that is empty or at its dev
default, naming each (adapters/settings.py SECRETS; README, "Security defaults")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adapters.settings import (
    PREFIX,
    SECRETS,
    InsecureSettingsError,
    Settings,
    check_secrets,
    dsn_password,
    dsn_with_role,
    insecure_secrets,
)

STRONG = {
    "environment": "production",
    "pg_dsn": "postgresql://leadscore:s3cret-owner@db.internal:5432/leadscore",
    "api_pg_dsn": "postgresql://leadscore_api:s3cret-api@db.internal:5432/leadscore",
    "webhook_secret_key": "bm90LWEtZGV2LWtleS1ub3QtYS1kZXYta2V5LTAxMjM=",
    "kafka_sasl_password": "s3cret-kafka",
    "schema_registry_password": "s3cret-registry",
    "kek": "c3Ryb25nLWtlay1ub3QtdGhlLWRldi1vbmUtMDEyMzQ=",
}


def production(**changes: str) -> Settings:
    return Settings(**{**STRONG, **changes})  # type: ignore[arg-type]


def test_dev_starts_with_every_dev_default() -> None:
    check_secrets(Settings())
    # ...while knowing each of them is a dev default.
    assert insecure_secrets(Settings()) == [s.setting for s in SECRETS]


def test_production_refuses_the_dev_defaults_and_names_each() -> None:
    with pytest.raises(InsecureSettingsError) as caught:
        check_secrets(Settings(environment="production"))
    message = str(caught.value)
    for name in (
        "PG_DSN",
        "API_PG_DSN",
        "WEBHOOK_SECRET_KEY",
        "KAFKA_SASL_PASSWORD",
        "SCHEMA_REGISTRY_PASSWORD",
        "KEK",
    ):
        assert f"{PREFIX}{name}" in message, message


def test_production_starts_when_every_secret_is_set() -> None:
    check_secrets(production())


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("pg_dsn", "postgresql://leadscore:leadscore@db.internal:5432/leadscore"),  # dev's
        ("pg_dsn", "postgresql://leadscore@db.internal:5432/leadscore"),  # none
        ("pg_dsn", "host=db.internal user=leadscore password=leadscore dbname=leadscore"),
        ("api_pg_dsn", ""),  # derived from pg_dsn: the dev role's password
        ("api_pg_dsn", "postgresql://leadscore_api:leadscore_api@db.internal/leadscore"),
        ("webhook_secret_key", ""),
        ("kafka_sasl_password", "leadscore-dev"),
        ("kafka_sasl_password", ""),
        ("schema_registry_password", "leadscore-dev"),
        ("schema_registry_password", ""),
    ],
)
def test_production_refuses_one_weak_secret(setting: str, value: str) -> None:
    with pytest.raises(InsecureSettingsError, match=f"{PREFIX}{setting.upper()}"):
        check_secrets(production(**{setting: value}))


def test_a_secret_that_is_not_used_is_not_required() -> None:
    check_secrets(production(kafka_security_protocol="SSL", kafka_sasl_password="leadscore-dev"))


def test_an_unknown_environment_is_refused() -> None:
    with pytest.raises(InsecureSettingsError, match="ENVIRONMENT is 'prod'"):
        check_secrets(Settings(environment="prod"))


def test_the_api_dsn_follows_pg_dsn_in_dev() -> None:
    s = Settings(pg_dsn="postgresql://leadscore:pw@127.0.0.1:25432/leadscore_test_ab12")
    assert (
        s.api_dsn == "postgresql://leadscore_api:leadscore_api@127.0.0.1:25432/leadscore_test_ab12"
    )
    assert Settings(api_pg_dsn="postgresql://a:b@h/d").api_dsn == "postgresql://a:b@h/d"
    kv = dsn_with_role("host=h dbname=d user=x password=y", "r", "p'w")
    assert dsn_password(kv) == "p'w"
    assert dsn_password("postgresql://u:p%40ss@h/d") == "p@ss"


def test_the_cli_refuses_to_start_in_production_with_dev_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env[f"{PREFIX}ENVIRONMENT"] = "production"
    out = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "orgs", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert "LEADSCORE_PG_DSN" in said and "LEADSCORE_WEBHOOK_SECRET_KEY" in said, said
    assert "Traceback" not in out.stderr
