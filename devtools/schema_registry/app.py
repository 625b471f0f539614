"""The subset of the Confluent Schema Registry REST API that the engine and its producers use.

Clients (confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer``) speak to it
exactly as to a Confluent or Apicurio registry, so ``LEADSCORE_SCHEMA_REGISTRY_URL`` can
point at either with no code change.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.schema_registry.auth import BasicAuth
from devtools.schema_registry.storage import RegistryError, Storage

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_CONNECT_TIMEOUT = 120.0  # the registry may start before PostgreSQL is accepting connections


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type=CONTENT_TYPE)


def _error(exc: RegistryError) -> Response:
    return _json({"error_code": exc.code, "message": exc.message}, exc.status)


Handler = Callable[[Request], Awaitable[Any]]


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        try:
            return _json(await handler(request))
        except RegistryError as exc:
            return _error(exc)

    return wrapped


def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def _schema_body(request: Request) -> str:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(42201, f"Invalid request body: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(42201, "Request body needs a 'schema' string")
    if body.get("schemaType", "AVRO") != "AVRO":
        raise RegistryError(42201, f"Unsupported schemaType {body['schemaType']!r}: AVRO only")
    if body.get("references"):
        raise RegistryError(42201, "Schema references are not supported by this registry")
    return str(body["schema"])


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() == "true"


async def root(request: Request) -> dict[str, Any]:
    return {}


async def schema_types(request: Request) -> list[str]:
    return ["AVRO"]


async def get_schema(request: Request) -> dict[str, Any]:
    schema = await _storage(request).schema_by_id(int(request.path_params["id"]))
    return {"schema": schema}


async def get_schema_text(request: Request) -> Any:
    return json.loads(await _storage(request).schema_by_id(int(request.path_params["id"])))


async def schema_subjects(request: Request) -> list[str]:
    pairs = await _storage(request).versions_of_schema(int(request.path_params["id"]))
    return sorted({subject for subject, _ in pairs})


async def schema_versions(request: Request) -> list[dict[str, Any]]:
    pairs = await _storage(request).versions_of_schema(int(request.path_params["id"]))
    return [{"subject": s, "version": v} for s, v in pairs]


async def subjects(request: Request) -> list[str]:
    return await _storage(request).subjects(_flag(request, "deleted"))


async def subject_versions(request: Request) -> list[int]:
    return await _storage(request).versions(request.path_params["subject"])


async def register(request: Request) -> dict[str, Any]:
    subject = request.path_params["subject"]
    schema_id = await _storage(request).register(subject, await _schema_body(request))
    return {"id": schema_id}


async def lookup(request: Request) -> dict[str, Any]:
    subject = request.path_params["subject"]
    found = await _storage(request).lookup(subject, await _schema_body(request))
    return found.as_json()


async def delete_subject(request: Request) -> list[int]:
    return await _storage(request).delete_subject(request.path_params["subject"])


async def get_version(request: Request) -> dict[str, Any]:
    p = request.path_params
    return (await _storage(request).version(p["subject"], p["version"])).as_json()


async def get_version_schema(request: Request) -> Any:
    p = request.path_params
    return json.loads((await _storage(request).version(p["subject"], p["version"])).schema)


async def compatibility(request: Request) -> dict[str, Any]:
    p = request.path_params
    problems = await _storage(request).compatibility(
        p["subject"], await _schema_body(request), p.get("version")
    )
    answer: dict[str, Any] = {"is_compatible": not problems}
    if _flag(request, "verbose"):
        answer["messages"] = problems
    return answer


async def get_config(request: Request) -> dict[str, Any]:
    subject = request.path_params.get("subject")
    level = await _storage(request).get_config(subject, _flag(request, "defaultToGlobal"))
    return {"compatibilityLevel": level}


async def put_config(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
        level = body["compatibility"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise RegistryError(42203, "Request body needs a 'compatibility' level") from exc
    level = await _storage(request).set_config(request.path_params.get("subject"), level)
    return {"compatibility": level}


async def mode(request: Request) -> dict[str, Any]:
    return {"mode": "READWRITE"}


def _routes() -> list[Route]:
    e = endpoint
    return [
        Route("/", e(root)),
        Route("/schemas/types", e(schema_types)),
        Route("/schemas/ids/{id:int}", e(get_schema)),
        Route("/schemas/ids/{id:int}/schema", e(get_schema_text)),
        Route("/schemas/ids/{id:int}/subjects", e(schema_subjects)),
        Route("/schemas/ids/{id:int}/versions", e(schema_versions)),
        Route("/subjects", e(subjects)),
        Route("/subjects/{subject}", e(lookup), methods=["POST"]),
        Route("/subjects/{subject}", e(delete_subject), methods=["DELETE"]),
        Route("/subjects/{subject}/versions", e(subject_versions), methods=["GET"]),
        Route("/subjects/{subject}/versions", e(register), methods=["POST"]),
        Route("/subjects/{subject}/versions/{version}", e(get_version)),
        Route("/subjects/{subject}/versions/{version}/schema", e(get_version_schema)),
        Route("/compatibility/subjects/{subject}/versions", e(compatibility), methods=["POST"]),
        Route(
            "/compatibility/subjects/{subject}/versions/{version}",
            e(compatibility),
            methods=["POST"],
        ),
        Route("/config", e(get_config), methods=["GET"]),
        Route("/config", e(put_config), methods=["PUT"]),
        Route("/config/{subject}", e(get_config), methods=["GET"]),
        Route("/config/{subject}", e(put_config), methods=["PUT"]),
        Route("/mode", e(mode)),
    ]


async def _connect(dsn: str) -> asyncpg.Pool:
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    while True:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        assert pool is not None
        return pool


def create_app(pg_dsn: str, user: str, password: str, *, auth_reads: bool = False) -> Starlette:
    """The registry; writes need ``user``/``password`` (reads too with ``auth_reads``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await _connect(pg_dsn)
        storage = Storage(pool)
        await storage.migrate()
        app.state.storage = storage
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(routes=_routes(), lifespan=lifespan)
    app.add_middleware(BasicAuth, user=user, password=password, reads=auth_reads)
    return app
