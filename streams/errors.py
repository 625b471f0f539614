"""Which failures are about a lead-event and which are about the engine: one place decides.

Two kinds, and only two:

- ``BadEventError``: the message itself is wrong (undecodable, an unknown schema id the
  registry answered 404 for, invalid, an unregistered org, or one event of a batch that
  fails to apply while the rest apply). It is dead-lettered and its offset committed.
- ``TransientError``: something the event cannot help (PostgreSQL away or read-only
  after a failover, SQLSTATE 25006; the schema registry or Kafka unreachable; a promoted
  model whose files this worker lacks; most of a batch failing at once). The batch is
  not dead-lettered and not committed: the worker retries it with backoff until it
  passes.

``classify`` maps the libraries' exceptions onto the two; ``transient`` wraps the cause
so callers catch one type. README, "Dead letters", has the table.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
from eventsourcing.persistence import PersistenceError

from adapters.eventstore import DATABASE_UNAVAILABLE
from adapters.model_artifacts import ArtifactError
from adapters.model_registry import ModelRegistryError
from adapters.modelstore import ModelNotFoundError
from streams.codec import ValidationError
from streams.wire import RegistryUnavailableError, SerializationError


class TransientError(RuntimeError):
    """Not the event's fault: retry the whole batch later, dead-letter nothing."""


class BadEventError(ValueError):
    """The event's own fault: dead-letter it, commit it, go on."""


class ModelUnavailableError(TransientError):
    """The model to score with has no files on this worker (a promotion it cannot follow yet)."""


class DatabaseUnavailableError(TransientError):
    """PostgreSQL is away, or refuses writes (read-only after a failover, 25006)."""


class RegistryDownError(TransientError):
    """The schema registry did not answer."""


class MassFailureError(TransientError):
    """Most of a batch failed to apply, each event alone: that is the engine, not the events."""


# SQLSTATE classes that say "this server cannot take writes now", not "this row is bad":
# 25006 read_only_sql_transaction, 57P0x admin/crash shutdown, 53xxx insufficient resources,
# 08xxx connection exceptions, 40001/40P01 serialization failure/deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P", "40001", "40P01", "25006", "55P03")

# A model this worker cannot score with: not on disk nor in the shared store, a stored
# copy that fails its digest, no active model.
MODEL_UNAVAILABLE: tuple[type[BaseException], ...] = (
    ModelNotFoundError,
    ArtifactError,
    ModelRegistryError,
)
# Library exceptions that are bad-event errors as they are.
BAD_EVENT: tuple[type[BaseException], ...] = (BadEventError, ValidationError, SerializationError)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is not about the event (see the module's docstring)."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, BAD_EVENT):
        return False
    if isinstance(exc, (*DATABASE_UNAVAILABLE, ConnectionError, TimeoutError)):
        return True  # RegistryUnavailableError is a ConnectionError
    if isinstance(exc, MODEL_UNAVAILABLE):
        return True  # no files for the promoted model, or no active model at all
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    # A library that wraps a database or network error (eventsourcing's recorders do).
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_transient(cause)


def transient(exc: BaseException) -> TransientError:
    """``exc`` as the TransientError subclass that names what is away (its cause kept)."""
    if isinstance(exc, TransientError):
        return exc
    kind: type[TransientError] = TransientError
    for link in _chain(exc):
        if isinstance(link, MODEL_UNAVAILABLE):
            kind = ModelUnavailableError
        elif isinstance(link, RegistryUnavailableError):
            kind = RegistryDownError
        elif isinstance(link, (psycopg.Error, PersistenceError, *DATABASE_UNAVAILABLE)):
            kind = DatabaseUnavailableError
        else:
            continue
        break
    err = kind(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    links: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in links:
        links.append(link)
        link = link.__cause__
    return links


def classify(exc: BaseException) -> str:
    """``"transient"`` or ``"bad_event"``: the label of the worker's error counters."""
    return "transient" if is_transient(exc) else "bad_event"
