"""The OpenAPI 3.1 document, generated from the routes the app serves.

``ApiSchema`` (a Starlette ``BaseSchemaGenerator``) walks the app's routes. Each route's
query parameters come from its own declaration (``@query`` in query_api/params.py, the
one the handler parses with), so they cannot drift; the path parameters, summaries,
response schemas and error bodies are written here by hand, keyed by path and method,
because they do not live in the handlers. ``coverage_gaps`` lists every route, method
and parameter the document misses (tests/unit/test_openapi_coverage.py fails on any);
tests/e2e/test_api_schemathesis.py holds the answers to the response schemas. Objects
the API builds itself are closed (``additionalProperties: false``) so any drift between
a handler and this document fails that test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Mount, Route
from starlette.schemas import BaseSchemaGenerator

from domain.timeline import LEAD_EVENTS
from domain.transitions import TYPED_EVENTS
from query_api.params import Schema, declared
from query_api.routes_leads import GRADES
from query_api.routes_models import MAX_WINDOW_HOURS
from query_api.routes_webhooks import STATUSES as DELIVERY_STATUSES

LEAD_EVENT_TYPES = tuple(cls.__name__ for cls in LEAD_EVENTS)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def obj(properties: dict[str, Schema], description: str | None = None) -> Schema:
    out: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    return out


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
NUMBER: Schema = {"type": "number"}
SCORE: Schema = {"type": "number", "minimum": 0, "maximum": 100}
RATE: Schema = nullable({"type": "number", "minimum": 0, "maximum": 1})
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
GRADE: Schema = {"type": "string", "enum": sorted(GRADES)}
PSI: Schema = nullable({"type": "number", "minimum": 0})
PSI_LEVEL: Schema = nullable({"type": "string", "enum": ["stable", "moderate", "significant"]})
CURSOR_OUT: Schema = nullable(
    {"type": "string", "description": "Pass as `cursor` for the next page; null on the last."}
)

COHORT_NOTE = (
    "With `from` and/or `until` (RFC 3339), only the leads created in that half-open range "
    "(the cohort), counting what they did at any time; `from` must be before `until`. "
)

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": {
                "type": "string",
                "enum": [
                    "unauthorized",
                    "forbidden",
                    "not_found",
                    "method_not_allowed",
                    "conflict",
                    "payload_too_large",
                    "invalid_parameters",
                    "rate_limited",
                    "internal_error",
                    "unavailable",
                    "bad_request",
                    "error",
                ],
            },
            "message": STRING,
            "details": {"type": "array", "items": ref("ParameterError")},
        },
        "Every error has this shape; `details` lists each invalid parameter (422).",
    ),
    "ParameterError": obj(
        {
            "parameter": STRING,
            "in": {"type": "string", "enum": ["query", "path"]},
            "message": STRING,
        }
    ),
    "Score": obj(
        {
            "score": SCORE,
            "grade": GRADE,
            "fit": SCORE,
            "engagement": SCORE,
            "model_version": STRING,
            "updated_at": TIMESTAMP,
            "position": {"type": "integer", "minimum": 1, "description": "Log position"},
            "factors": {"type": "array", "items": ref("Factor")},
        },
        "A lead's current score: 100 x P(conversion), its fit and engagement components "
        "(0-100), the grade on the fit (A-C) x engagement (1-3) matrix and its top factors.",
    ),
    "Lead": obj(
        {
            "org_id": STRING,
            "lead_id": STRING,
            "email": nullable(STRING),
            "first_name": nullable(STRING),
            "last_name": nullable(STRING),
            "company": nullable(STRING),
            "title": nullable(STRING),
            "industry": nullable(STRING),
            "employees": nullable(INTEGER),
            "country": nullable(STRING),
            "source": nullable(STRING),
            "status": {"type": "string", "enum": ["open", "converted", "disqualified"]},
            "created_at": TIMESTAMP,
            "updated_at": TIMESTAMP,
            "score": nullable(ref("Score")),
        }
    ),
    "LeadPage": obj({"items": {"type": "array", "items": ref("Lead")}, "next_cursor": CURSOR_OUT}),
    "LeadExport": obj(
        {
            "org_id": STRING,
            "lead_id": STRING,
            "forgotten": nullable(
                obj({"at": TIMESTAMP, "reason": nullable(STRING)}, "When the lead was forgotten")
            ),
            "profile": {"type": "object", "description": "Profile fields as they stand"},
            "attributes": {"type": "object", "description": "The org's own fields"},
            "score": nullable({"type": "object", "description": "Latest score and factors"}),
            "events": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Every stored event of the lead, in log order, with its data "
                "(position, version, kind and the event's fields).",
            },
        },
        "Everything the event store holds about the person (right of access). A forgotten "
        "lead's events come without their personal data, which no key can decrypt any more.",
    ),
    "Forgotten": obj(
        {
            "org_id": STRING,
            "lead_id": STRING,
            "key_destroyed": {"type": "boolean", "description": "False: destroyed before"},
            "already_forgotten": {"type": "boolean"},
            "shadow_scores_deleted": INTEGER,
        },
        "What erasure did at once; read models and webhook deliveries follow the log.",
    ),
    "Factor": {
        "type": "object",
        "description": "One of the score's top factors (3 positive, 3 negative at most): "
        "its contribution in score points against a lead of the same age we know nothing "
        "about; all contributions of a score add up to the score minus that reference's.",
        "properties": {"feature": STRING, "label": STRING, "contribution": NUMBER},
    },
    "ScoreChange": obj(
        {
            "version": {"type": "integer", "minimum": 1},
            "position": {"type": "integer", "minimum": 1},
            "score": SCORE,
            "previous_score": nullable(SCORE),
            "grade": GRADE,
            "components": {
                "type": "object",
                "properties": {"fit": SCORE, "engagement": SCORE},
                "required": ["fit", "engagement"],
            },
            "factors": {"type": "array", "items": ref("Factor")},
            "model_version": STRING,
            "caused_by_event_id": STRING,
            "at": TIMESTAMP,
        }
    ),
    "ScoreHistoryPage": obj(
        {
            "lead_id": STRING,
            "items": {"type": "array", "items": ref("ScoreChange")},
            "next_cursor": CURSOR_OUT,
        }
    ),
    "LeaderboardEntry": obj(
        {
            "rank": {"type": "integer", "minimum": 1},
            "lead_id": STRING,
            "score": SCORE,
            "grade": nullable(GRADE),
        }
    ),
    "Leaderboard": obj({"items": {"type": "array", "items": ref("LeaderboardEntry")}}),
    "ScoreDistribution": obj(
        {
            "org_id": STRING,
            "bucket": {"type": "integer", "minimum": 1, "maximum": 100},
            "leads": COUNT,
            "buckets": {
                "type": "array",
                "items": obj({"from": INTEGER, "to": INTEGER, "count": COUNT}),
            },
            "grades": {"type": "array", "items": obj({"grade": GRADE, "count": COUNT})},
        },
        "Current scores of the org's leads in buckets [from, to), and per grade.",
    ),
    "Funnel": obj(
        {
            "org_id": STRING,
            "items": {
                "type": "array",
                "items": obj(
                    {
                        "step": {
                            "type": "string",
                            "enum": ["created", "engaged", "high_score", "converted"],
                        },
                        "leads": COUNT,
                        "step_rate": RATE,
                        "overall_rate": RATE,
                    }
                ),
            },
        },
        "Nested steps: created, engaged (an activity), high score (>= 70 at any time), "
        "converted; each counts leads that passed the steps before it.",
    ),
    "DeadLetters": obj(
        {
            "org_id": STRING,
            "from": TIMESTAMP,
            "until": TIMESTAMP,
            "bucket": {"type": "string", "enum": ["day", "hour"]},
            "total": COUNT,
            "reasons": {"type": "array", "items": obj({"reason": STRING, "count": COUNT})},
            "items": {
                "type": "array",
                "items": obj({"at": TIMESTAMP, "reason": STRING, "count": COUNT}),
            },
        },
        "The organization's dead letters in [from, until): per reason, and per reason and "
        "bucket (only buckets with letters).",
    ),
    "ConversionBySource": obj(
        {
            "org_id": STRING,
            "items": {
                "type": "array",
                "items": obj(
                    {"source": nullable(STRING), "leads": COUNT, "converted": COUNT, "rate": RATE}
                ),
            },
        }
    ),
    "ConversionByScoreBand": obj(
        {
            "org_id": STRING,
            "band": {"type": "integer", "minimum": 1, "maximum": 100},
            "items": {
                "type": "array",
                "items": obj(
                    {
                        "from": INTEGER,
                        "to": INTEGER,
                        "leads": COUNT,
                        "converted": COUNT,
                        "rate": RATE,
                    }
                ),
            },
        },
        "Leads by the score they had before their outcome (their current one while open).",
    ),
    "ModelComparison": obj(
        {
            "org_id": STRING,
            "items": {
                "type": "array",
                "items": obj(
                    {
                        "model_version": STRING,
                        "scores": COUNT,
                        "leads": COUNT,
                        "mean_score": SCORE,
                        "high_leads": COUNT,
                        "high_converted": COUNT,
                        "high_conversion_rate": RATE,
                    }
                ),
            },
        },
        "Per model version over the org's score history: how many leads it put at >= 70 "
        "and how many of those converted.",
    ),
    "Model": obj(
        {
            "version": STRING,
            "trained_at": nullable(STRING),
            "active": {"type": "boolean"},
            "scope": {"type": "string", "description": "global, or the org it was trained for"},
            "status": {
                "type": "string",
                "enum": ["registered", "active", "shadow", "retired", "unregistered"],
            },
            "metrics": {
                "type": "object",
                "description": "Hold-out metrics from metadata.json (auc, log_loss, ...).",
            },
            "feature_names": {"type": "array", "items": STRING},
            "n_train": nullable(COUNT),
            "n_holdout": nullable(COUNT),
        }
    ),
    "Models": obj(
        {
            "active_version": nullable(STRING),
            "active": nullable(ref("Model")),
            "items": {"type": "array", "items": ref("Model")},
        },
        "Global models and the caller's own, oldest first, with their registry status. The "
        "active one is the model that scores the caller's org (`leadscore models promote`).",
    ),
    "Drift": obj(
        {
            "model_version": STRING,
            "org_id": STRING,
            "window": obj(
                {
                    "from": TIMESTAMP,
                    "to": TIMESTAMP,
                    "hours": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_HOURS},
                },
                "The last `hours` hour buckets, the current one included.",
            ),
            "observations": COUNT,
            "score": obj(
                {
                    "psi": PSI,
                    "level": PSI_LEVEL,
                    "bins": {
                        "type": "array",
                        "items": obj(
                            {
                                "from": SCORE,
                                "to": SCORE,
                                "expected": RATE,
                                "actual": RATE,
                                "count": COUNT,
                            },
                            "Scores in [from, to): the training share (expected) and the "
                            "window's (actual; null without observations).",
                        ),
                    },
                }
            ),
            "features": {
                "type": "array",
                "items": obj({"feature": STRING, "psi": PSI, "level": PSI_LEVEL}),
                "description": "Most drifted first.",
            },
            "reference_source": STRING,
        },
        "Population stability index (PSI) of the org's features and scores under this "
        "model in the window, against the model's training set: < 0.1 stable, 0.1-0.25 "
        "moderate, > 0.25 significant. psi and level are null without observations.",
    ),
    "Check": obj(
        {
            "status": {"type": "string", "enum": ["up", "down"]},
            "latency_ms": NUMBER,
            "error": nullable(STRING),
        }
    ),
    "ProjectionStatus": obj(
        {
            "name": STRING,
            "running": {"type": "boolean"},
            "position": COUNT,
            "head": COUNT,
            "lag": COUNT,
            "restarts": COUNT,
            "last_error": nullable(STRING),
        },
        "The ClickHouse projection this process runs (embedded chDB only).",
    ),
    "Health": obj(
        {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "checks": obj(
                {"postgresql": ref("Check"), "redis": ref("Check"), "clickhouse": ref("Check")}
            ),
            "projection": nullable(ref("ProjectionStatus")),
            "read_cache": ref("ReadCache"),
        }
    ),
    "ReadCache": obj(
        {
            "enabled": {"type": "boolean"},
            "listening": {"type": "array", "items": {"type": "string"}},
            "leads": COUNT,
            "leaderboards": COUNT,
        },
        "The in-process cache of GET /leads/{id} and GET /leaderboard answers: on while it "
        "hears both read models' change notices, with the number of answers it holds.",
    ),
    "WebhookDelivery": obj(
        {
            "id": {"type": "integer", "minimum": 1},
            "webhook_id": {"type": "integer", "minimum": 1},
            "url": STRING,
            "org_id": STRING,
            "event_id": STRING,
            "event_type": {"type": "string", "enum": list(TYPED_EVENTS)},
            "status": {"type": "string", "enum": list(DELIVERY_STATUSES)},
            "attempts": COUNT,
            "last_status": nullable({**INTEGER, "description": "HTTP status of the last answer"}),
            "last_error": nullable(STRING),
            "next_attempt_at": nullable(
                {**TIMESTAMP, "description": "When a pending delivery is tried next"}
            ),
            "created_at": TIMESTAMP,
            "delivered_at": nullable(TIMESTAMP),
        },
        "One typed score-event for one webhook: pending (to be tried at next_attempt_at), "
        "delivered (a 2xx), or dead (every attempt failed; last_status and last_error say "
        "how the last one did).",
    ),
    "WebhookDeliveryPage": obj(
        {"items": {"type": "array", "items": ref("WebhookDelivery")}, "next_cursor": CURSOR_OUT}
    ),
    "Live": obj({"status": {"type": "string", "enum": ["ok"]}}, "The process answers requests."),
    "LeadAsOf": obj(
        {
            "org_id": STRING,
            "lead_id": STRING,
            "at": TIMESTAMP,
            "version": {"type": "integer", "minimum": 1, "description": "The lead's version"},
            "recorded_at": {**TIMESTAMP, "description": "When that version was stored"},
            "created_at": TIMESTAMP,
            "profile": {"type": "object", "description": "Profile fields set by then"},
            "status": {"type": "string", "enum": ["open", "converted", "disqualified"]},
            "last_event_at": TIMESTAMP,
            "activity_counts": {"type": "object", "additionalProperties": COUNT},
            "score": nullable(
                obj(
                    {
                        "score": SCORE,
                        "grade": GRADE,
                        "stage": nullable(STRING),
                        "fit": SCORE,
                        "engagement": SCORE,
                        "model_version": STRING,
                        "rules_version": nullable(STRING),
                        "factors": {"type": "array", "items": ref("Factor")},
                        "version": {"type": "integer", "minimum": 1},
                        "recorded_at": TIMESTAMP,
                    }
                )
            ),
        },
        "The lead as the engine held it at `at`: the version stored last at or before it, "
        "rebuilt from the event store; `score` is null when it was not scored yet.",
    ),
    "TimelineEvent": obj(
        {
            "version": {"type": "integer", "minimum": 1},
            "event_id": nullable(STRING),
            "type": {"type": "string", "enum": list(LEAD_EVENT_TYPES)},
            "activity": nullable(STRING),
            "occurred_at": TIMESTAMP,
            "recorded_at": TIMESTAMP,
        },
        "A lead-event as stored: its type, activity kind, when it happened and was stored.",
    ),
    "TimelineEntry": obj(
        {
            "version": {"type": "integer", "minimum": 1},
            "recorded_at": TIMESTAMP,
            "score": SCORE,
            "previous_score": nullable(SCORE),
            "grade": GRADE,
            "previous_grade": nullable(GRADE),
            "stage": nullable(STRING),
            "fit": SCORE,
            "engagement": SCORE,
            "model_version": STRING,
            "rules_version": nullable(STRING),
            "factors": {"type": "array", "items": ref("Factor")},
            "cause": obj(
                {
                    "kind": {
                        "type": "string",
                        "enum": ["lead_event", "decay", "replay"],
                        "description": "A lead-event, the decay timer, or a replay "
                        "(`leadscore replay`) with another model",
                    },
                    "event_id": STRING,
                    "type": nullable({"type": "string", "enum": list(LEAD_EVENT_TYPES)}),
                    "activity": nullable(STRING),
                    "occurred_at": nullable(TIMESTAMP),
                }
            ),
            "events": {
                "type": "array",
                "items": ref("TimelineEvent"),
                "description": "The lead-events applied since the previous score",
            },
        }
    ),
    "Timeline": obj(
        {"lead_id": STRING, "items": {"type": "array", "items": ref("TimelineEntry")}},
        "Every score change of the lead, oldest first, with its cause.",
    ),
    "Diff": obj(
        {
            "lead_id": STRING,
            "from": TIMESTAMP,
            "to": TIMESTAMP,
            "from_version": {"type": "integer", "minimum": 1},
            "to_version": {"type": "integer", "minimum": 1},
            "score_from": nullable(SCORE),
            "score_to": nullable(SCORE),
            "score_change": NUMBER,
            "grade_from": nullable(GRADE),
            "grade_to": nullable(GRADE),
            "factors": {
                "type": "array",
                "items": obj(
                    {
                        "feature": STRING,
                        "label": STRING,
                        "from": NUMBER,
                        "to": NUMBER,
                        "change": NUMBER,
                    }
                ),
                "description": "Each named factor's contribution at both instants (0 where "
                "it was not among the top factors), largest change first.",
            },
            "rest": {
                **NUMBER,
                "description": "The change the named factors do not carry (smaller factors, "
                "the reference lead's own change): factors' changes + rest = score_change.",
            },
            "events": {"type": "array", "items": ref("TimelineEvent")},
            "scores": {
                "type": "array",
                "items": obj({"version": INTEGER, "score": SCORE, "recorded_at": TIMESTAMP}),
            },
        },
        "What changed between two instants: the lead-events and scores stored in between.",
    ),
}


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {
        "description": description,
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


RESPONSES: dict[str, Schema] = {
    "Unauthorized": _error(
        "Missing, malformed, unknown or revoked API key.",
        {"WWW-Authenticate": {"schema": STRING, "description": "Bearer challenge"}},
    ),
    "NotFound": _error("No such lead in the key's organization (also another org's lead)."),
    "DeliveryNotFound": _error(
        "No such webhook delivery in the key's organization (also another org's)."
    ),
    "ModelNotFound": _error(
        "No model of this version in the model directory, or another org's model (which "
        "answers exactly like a missing one)."
    ),
    "NoReference": _error(
        "The model has no training reference to compare with (trained before drift "
        "monitoring); add one with leadscore.drift_reference.add_reference_from_provenance."
    ),
    "InvalidParameters": _error("A parameter is out of range, malformed or not allowed."),
    "Forbidden": _error("The operation needs an admin API key (`apikeys create --admin`)."),
    "Unavailable": _error(
        "A backing store is down; retry.",
        {"Retry-After": {"schema": STRING, "description": "Seconds to wait"}},
    ),
    "TooManyRequests": _error(
        "Over the rate limit of the client IP (every request) or of the API key "
        "(authenticated requests): token buckets, `LEADSCORE_API_IP_RATE`/`_BURST` and "
        "`LEADSCORE_API_KEY_RATE`/`_BURST`.",
        {"Retry-After": {"schema": STRING, "description": "Seconds to wait"}},
    ),
    "PayloadTooLarge": _error(
        "The request has a body over `LEADSCORE_API_MAX_BODY_BYTES` (no operation takes one)."
    ),
}

# Any request may meet these, whatever its operation.
LIMITS: dict[str, Schema] = {
    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
    "429": {"$ref": "#/components/responses/TooManyRequests"},
}


LEAD_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    "description": "The lead's id as the upstream systems name it.",
}


def _ok(schema_name: str, description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": ref(schema_name)}},
    }


def _read(
    summary: str,
    schema_name: str,
    path_parameters: list[Schema] | None = None,
    *,
    tag: str,
    not_found: bool = False,
    description: str | None = None,
) -> Schema:
    """An authenticated read: 200, 401, 422 and 503 always, 404 where a lead is named.

    Its query parameters are added from the route's declaration (``ApiSchema``).
    """
    responses: dict[str, Schema] = {
        "200": _ok(schema_name, summary),
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "422": {"$ref": "#/components/responses/InvalidParameters"},
        "503": {"$ref": "#/components/responses/Unavailable"},
        **LIMITS,
    }
    if not_found:
        responses["404"] = {"$ref": "#/components/responses/NotFound"}
    op: Schema = {
        "summary": summary,
        "tags": [tag],
        "operationId": summary.lower().replace(" ", "_").replace("'", ""),
        "parameters": path_parameters or [],
        "responses": dict(sorted(responses.items())),
    }
    if description:
        op["description"] = description
    return op


def _erase() -> Schema:
    op = _read(
        "Forget a lead",
        "Forgotten",
        [LEAD_ID],
        tag="leads",
        not_found=True,
        description="Erase the person (needs an admin API key): destroys "
        "the lead's data key, records LeadForgotten, deletes its shadow scores; the read "
        'models and webhook deliveries follow within a moment (README, "Privacy").',
    )
    op["responses"] = dict(
        sorted({**op["responses"], "403": {"$ref": "#/components/responses/Forbidden"}}.items())
    )
    return op


def _public(summary: str, responses: dict[str, Schema], description: str) -> Schema:
    return {
        "summary": summary,
        "tags": ["operations"],
        "operationId": summary.lower().replace(" ", "_"),
        "description": description,
        "security": [],
        "responses": dict(sorted({**responses, **LIMITS}.items())),
    }


def _drift() -> Schema:
    op = _read(
        "Get a model's drift",
        "Drift",
        [
            {
                "name": "version",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
                "description": "A model version, e.g. v1.",
            },
        ],
        tag="models",
        description="What the workers scored for the key's organization under this model in "
        "the window, binned like its training set, as PSI per feature and for the score. "
        "Source: PostgreSQL `model_drift`.",
    )
    op["responses"] = dict(
        sorted(
            {
                **op["responses"],
                "404": {"$ref": "#/components/responses/ModelNotFound"},
                "409": {"$ref": "#/components/responses/NoReference"},
            }.items()
        )
    )
    return op


def _delivery() -> Schema:
    op = _read(
        "Get a webhook delivery",
        "WebhookDelivery",
        [
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
                "description": "The delivery's id (`id` in the listing).",
            }
        ],
        tag="webhooks",
        description="One delivery of the key's organization. Source: PostgreSQL.",
    )
    op["responses"] = dict(
        sorted(
            {**op["responses"], "404": {"$ref": "#/components/responses/DeliveryNotFound"}}.items()
        )
    )
    return op


# What the handlers cannot say, per path and method: summaries, path parameters,
# responses. Query parameters are the routes' own (``ApiSchema`` adds them).
OPERATIONS: dict[str, Schema] = {
    "/leads": {
        "get": _read(
            "List leads",
            "LeadPage",
            tag="leads",
            description="Scored leads of the key's organization, by current score descending "
            "then lead id (keyset pagination). Source: PostgreSQL.",
        )
    },
    "/leads/{id}": {
        "get": _read(
            "Get a lead",
            "Lead",
            [LEAD_ID],
            tag="leads",
            not_found=True,
            description="Profile (PostgreSQL) and current score (Redis; PostgreSQL when "
            "Redis has none or an older one).",
        ),
        "delete": _erase(),
    },
    "/leads/{id}/export": {
        "get": _read(
            "Export a lead",
            "LeadExport",
            [LEAD_ID],
            tag="leads",
            not_found=True,
            description="Everything held about the person: profile, custom attributes, "
            'every stored event, the latest score and its factors (README, "Privacy"). '
            "Source: the event store.",
        )
    },
    "/leads/{id}/scores": {
        "get": _read(
            "Get a lead's score history",
            "ScoreHistoryPage",
            [LEAD_ID],
            tag="leads",
            not_found=True,
            description="Every score change of the lead, newest first (keyset pagination "
            "by log position). Source: PostgreSQL.",
        )
    },
    "/leads/{id}/as-of": {
        "get": _read(
            "Get a lead as of an instant",
            "LeadAsOf",
            [LEAD_ID],
            tag="time travel",
            not_found=True,
            description="Profile, score, grade, stage, fit, engagement and factors as the "
            "engine held them at `at`: the lead's version stored last at or before `at`, "
            "rebuilt from the event store (not a read model). 422 when `at` is malformed, "
            "in the future or before the lead was created.",
        )
    },
    "/leads/{id}/timeline": {
        "get": _read(
            "Get a lead's timeline",
            "Timeline",
            [LEAD_ID],
            tag="time travel",
            not_found=True,
            description="Every score change with the lead-event that caused it (or the "
            "decay timer, or a replay), the model and rules versions and the factors. "
            "Source: the event store.",
        )
    },
    "/leads/{id}/diff": {
        "get": _read(
            "Get what changed between two instants",
            "Diff",
            [LEAD_ID],
            tag="time travel",
            not_found=True,
            description="The lead-events and scores stored between `from` and `to`, and "
            "each factor's contribution change; the changes plus `rest` sum to the score "
            "change. Source: the event store.",
        )
    },
    "/leaderboard": {
        "get": _read(
            "Get the leaderboard",
            "Leaderboard",
            tag="leads",
            description="The organization's top leads by current score (Redis), or with "
            "`as_of` by their score at that instant (PostgreSQL `score_history`).",
        )
    },
    "/analytics/score-distribution": {
        "get": _read(
            "Get the score distribution",
            "ScoreDistribution",
            tag="analytics",
            description=COHORT_NOTE + "Source: ClickHouse.",
        )
    },
    "/analytics/funnel": {
        "get": _read(
            "Get the funnel",
            "Funnel",
            tag="analytics",
            description=COHORT_NOTE + "Source: ClickHouse.",
        )
    },
    "/analytics/conversion-by-source": {
        "get": _read(
            "Get conversion by source",
            "ConversionBySource",
            tag="analytics",
            description="Per lead source: leads, converted, rate. "
            + COHORT_NOTE
            + "Source: ClickHouse.",
        )
    },
    "/analytics/conversion-by-score-band": {
        "get": _read(
            "Get conversion by score band",
            "ConversionByScoreBand",
            tag="analytics",
            description=COHORT_NOTE + "Source: ClickHouse.",
        )
    },
    "/analytics/models": {
        "get": _read(
            "Compare models",
            "ModelComparison",
            tag="analytics",
            description="Source: ClickHouse.",
        )
    },
    "/dead-letters": {
        "get": _read(
            "Count dead letters",
            "DeadLetters",
            tag="operations",
            description="The organization's dead letters by reason over time, from the "
            "dead-letter log the worker writes as it produces them (no payloads). Letters "
            "whose organization could not be decoded are shown to no organization.",
        )
    },
    "/models": {
        "get": _read(
            "List models",
            "Models",
            tag="models",
            description="The global versions in the model directory and the key's org's "
            "own, with their metadata.json metrics; never another org's.",
        )
    },
    "/models/{version}/drift": {"get": _drift()},
    "/webhooks/deliveries": {
        "get": _read(
            "List webhook deliveries",
            "WebhookDeliveryPage",
            tag="webhooks",
            description="The organization's webhook deliveries, newest first, with their "
            "status. Source: PostgreSQL `webhook_deliveries`.",
        )
    },
    "/webhooks/deliveries/{id}": {"get": _delivery()},
    "/health": {
        "get": _public(
            "Health",
            {
                "200": _ok("Health", "Every dependency is up."),
                "503": _ok("Health", "At least one dependency is down; see `checks`."),
            },
            "The same as /health/ready, kept for existing probes. No authentication.",
        )
    },
    "/health/ready": {
        "get": _public(
            "Readiness",
            {
                "200": _ok("Health", "Every dependency is up."),
                "503": _ok("Health", "At least one dependency is down; see `checks`."),
            },
            "Readiness: checks PostgreSQL, Redis and ClickHouse; a 503 should take the "
            "process out of the load balancer, not restart it. No authentication.",
        )
    },
    "/health/live": {
        "get": _public(
            "Liveness",
            {"200": _ok("Live", "The process answers.")},
            "Liveness: checks no dependency, so an outage never gets the API restarted. "
            "No authentication.",
        )
    },
    "/metrics": {
        "get": _public(
            "Metrics",
            {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": STRING}},
                },
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
            "Prometheus metrics. No API key; when `LEADSCORE_API_METRICS_TOKEN` is set, "
            "`Authorization: Bearer <that token>` is required (else 401).",
        )
    },
    "/openapi.json": {
        "get": _public(
            "OpenAPI",
            {
                "200": {
                    "description": "This document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
            "This OpenAPI document. No authentication.",
        )
    },
}


class ApiSchema(BaseSchemaGenerator):
    """The document of the routes it is given: each operation's hand-written part and the
    query parameters its endpoint declared. A route with no hand-written operation is
    left out (``coverage_gaps`` reports it)."""

    def __init__(self, server_url: str | None = None) -> None:
        self.server_url = server_url

    def get_schema(self, routes: list[BaseRoute]) -> Schema:
        paths: dict[str, Schema] = {}
        for endpoint in self.get_endpoints(routes):
            op = OPERATIONS.get(endpoint.path, {}).get(endpoint.http_method)
            if op is None:
                continue
            op = dict(op)
            queries = [param.openapi() for param in declared(endpoint.func)]
            if queries or "parameters" in op:
                op["parameters"] = [*op.get("parameters", []), *queries]
            paths.setdefault(endpoint.path, {})[endpoint.http_method] = op
        return _envelope(paths, self.server_url)


def document(routes: Sequence[BaseRoute], server_url: str | None = None) -> Schema:
    """The OpenAPI document of these routes (an app's ``app.routes``)."""
    return ApiSchema(server_url).get_schema(list(routes))


_CONVERTER = re.compile(r":\w+}")
CONSOLE = "console"  # the Mount of the console's pages: HTML for people, not the API


def api_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The routes of the API: all but the console's (query_api/console/)."""
    return [
        r
        for r in routes
        if not (isinstance(r, Mount) and r.name == CONSOLE)
        and getattr(r, "include_in_schema", True)
    ]


def coverage_gaps(routes: Sequence[BaseRoute], doc: Schema) -> list[str]:
    """Every route, method, path parameter and declared query parameter of ``routes`` that
    ``doc`` does not document, and every documented operation no route serves."""
    gaps: list[str] = []
    served: set[tuple[str, str]] = set()
    for route in api_routes(routes):
        if not isinstance(route, Route):
            gaps.append(f"{route!r}: not a Route, so its operations cannot be listed")
            continue
        path = _CONVERTER.sub("}", route.path)  # /items/{id:int} is /items/{id}
        item = doc.get("paths", {}).get(path)
        if item is None:
            gaps.append(f"{path}: route not in the document")
            continue
        # Starlette answers HEAD for every GET route by itself; OpenAPI leaves it implied.
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        for method in sorted(methods):
            served.add((path, method))
            op = item.get(method)
            if op is None:
                gaps.append(f"{method.upper()} {path}: method not in the document")
                continue
            documented = {(p.get("in"), p.get("name")) for p in op.get("parameters", [])}
            for name in route.param_convertors:
                if ("path", name) not in documented:
                    gaps.append(f"{method.upper()} {path}: path parameter {name!r} missing")
            for param in declared(route.endpoint):
                if ("query", param.name) not in documented:
                    gaps.append(f"{method.upper()} {path}: query parameter {param.name!r} missing")
    for path, item in doc.get("paths", {}).items():
        for method in item:
            if (path, method) not in served:
                gaps.append(f"{method.upper()} {path}: documented but no route serves it")
    return gaps


def _envelope(paths: dict[str, Schema], server_url: str | None) -> Schema:
    doc: Schema = {
        "openapi": "3.1.0",
        "info": {
            "title": "leadscore query API",
            "version": "1.0.0",
            "description": "Read-only API over the lead-scoring read models. Every read is "
            "scoped to the organization of the bearer API key (`leadscore apikeys create`).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "lsk_ API key",
                    "description": "`Authorization: Bearer lsk_...`",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
