"""Which sink errors are about the entries (quarantine them) and which about the store
(retry with backoff); and that a quarantine reason never echoes the refused value."""

from __future__ import annotations

import asyncpg
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from projections.base import CONNECTION_ERRORS
from projections.clickhouse import ClickHouseProjection
from projections.postgres import PostgresProjection
from projections.quarantine import describe
from projections.redis import RedisProjection


class _NoClient:
    def register_script(self, _text: str) -> None:
        return None


PG = PostgresProjection(None)  # type: ignore[arg-type]
RD = RedisProjection(_NoClient())  # type: ignore[arg-type]
CH = ClickHouseProjection(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("projection", "exc", "about_the_entry"),
    [
        (PG, asyncpg.CharacterNotInRepertoireError("0x00"), True),
        (PG, asyncpg.DataError("invalid input for query argument $1"), True),
        (PG, asyncpg.CheckViolationError("check"), True),
        (PG, asyncpg.ReadOnlySQLTransactionError("read-only"), False),
        (PG, asyncpg.DiskFullError("disk full"), False),
        (PG, asyncpg.AdminShutdownError("shutdown"), False),
        (RD, ResponseError("Error running script: bad argument"), True),
        (RD, ResponseError("OOM command not allowed when used memory > 'maxmemory'"), False),
        (RD, ReadOnlyError("You can't write against a read only replica."), False),
        (RD, NoScriptError("No matching script."), False),
        (RD, RedisConnectionError("refused"), False),
        (CH, DataError("cannot serialise"), True),
        (CH, DatabaseError("Code: 6. Cannot parse string"), True),
        (CH, OperationalError("connection refused"), False),
    ],
)
def test_data_errors_are_told_from_store_errors(
    projection: object, exc: Exception, about_the_entry: bool
) -> None:
    assert projection.is_data_error(exc) is about_the_entry  # type: ignore[attr-defined]


def test_connection_errors_are_never_data_errors() -> None:
    assert issubclass(ConnectionRefusedError, CONNECTION_ERRORS)
    assert issubclass(asyncpg.PostgresConnectionError, CONNECTION_ERRORS)


def test_a_reason_keeps_the_why_not_the_value() -> None:
    exc = asyncpg.DataError(
        "invalid input for query argument $10 in element #0 of executemany() sequence: "
        "'ada@example.io' (value out of int32 range)"
    )
    assert describe(exc) == "invalid input for query argument $10 (value out of int32 range)"
    assert len(describe(ValueError("x" * 5000))) == 500
