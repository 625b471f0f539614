"""Kafka as a tenant boundary: principals (SCRAM users) and the ACLs that bind a tenant's
producer to its own org's topic (README, "Kafka as a tenant boundary").

``grant_producer(settings, "acme-crm", "acme")`` makes sure that

- the SCRAM user ``acme-crm`` exists (with a generated password when it is new),
- the topic ``<lead-events>.org.acme`` exists, as lead-events is made,
- ``User:acme-crm`` may WRITE (and DESCRIBE) that topic, and nothing else.

The broker enforces the ACL; streams/gate.py forwards from the org's topic only the
lead-events of that org. Kafka's own records (users, ACLs, topics) are the source of
truth: nothing is kept beside them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from adapters.settings import Settings
from adapters.topics import ensure_topics, org_of_topic, org_topic, topic_configs
from domain.events import ORG_ID_PATTERN

SCRAM_ITERATIONS = 8192
_OPERATIONS = (AclOperation.WRITE, AclOperation.DESCRIBE)
_TIMEOUT = 30.0


class AccessError(ValueError):
    """A grant that cannot be made (a bad name, the broker refused)."""


@dataclass(frozen=True)
class ProducerGrant:
    principal: str
    org_id: str
    topic: str


def _admin(settings: Settings) -> AdminClient:
    return AdminClient({**settings.kafka, "log_level": 3})


def _check_principal(principal: str) -> None:
    # SCRAM names are free text in Kafka; ours stay plain so ACL principals read clearly.
    if not ORG_ID_PATTERN.match(principal):
        raise AccessError(f"principal {principal!r}: letters, digits, '.', '_' and '-' only")
    if principal == "ANONYMOUS":
        raise AccessError("ANONYMOUS is the broker's own principal")


def ensure_user(settings: Settings, principal: str, password: str | None = None) -> str | None:
    """Create the SCRAM user (every SCRAM mechanism) unless it exists; with ``password``,
    (re)set its password. Return the password when one was generated here, else None."""
    _check_principal(principal)
    admin = _admin(settings)
    if password is None and _user_exists(admin, principal):
        return None
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(24)
    # One request per mechanism: the broker refuses two changes of a user in one.
    for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
        upsert = UserScramCredentialUpsertion(
            principal, ScramCredentialInfo(mechanism, SCRAM_ITERATIONS), password.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            try:
                future.result(timeout=_TIMEOUT)
            except KafkaException as exc:
                raise AccessError(f"could not set the credentials of {principal!r}: {exc}") from exc
    return generated


def _user_exists(admin: AdminClient, principal: str) -> bool:
    try:
        result = admin.describe_user_scram_credentials([principal])
        description = result[principal].result(timeout=_TIMEOUT)
    except KafkaException:
        return False  # RESOURCE_NOT_FOUND: no credentials for this user
    return bool(description.scram_credential_infos)


def grant_producer(
    settings: Settings, principal: str, org_id: str, *, password: str | None = None
) -> str | None:
    """Let ``principal`` produce lead-events of ``org_id`` (see the module doc); return
    the password when the user was made here with a generated one."""
    topic = org_topic(settings.topic_lead_events, org_id)
    config = topic_configs(settings)[settings.topic_lead_events]
    return _grant(settings, principal, org_id, topic, config, _OPERATIONS, password=password)


def grant_subscriber(
    settings: Settings, principal: str, org_id: str, *, password: str | None = None
) -> str | None:
    """Let ``principal`` read the score-events of ``org_id`` and no other org's: the topic
    ``<score-events>.org.<org>`` (the relay copies that org's score-events there once
    it exists) with READ and DESCRIBE, and consumer groups whose names start with the
    principal. Return the password when the user was made here with a generated one."""
    topic = org_topic(settings.topic_score_events, org_id)
    groups = AclBinding(
        ResourceType.GROUP,
        principal,
        ResourcePatternType.PREFIXED,
        f"User:{principal}",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    operations = (AclOperation.READ, AclOperation.DESCRIBE)
    return _grant(settings, principal, org_id, topic, {}, operations, [groups], password=password)


def _grant(
    settings: Settings,
    principal: str,
    org_id: str,
    topic: str,
    config: dict[str, str],
    operations: tuple[AclOperation, ...],
    extra: list[AclBinding] | None = None,
    *,
    password: str | None,
) -> str | None:
    """The user, the org's topic, and ACLs for ``operations`` on it (plus ``extra``)."""
    if not ORG_ID_PATTERN.match(org_id):
        raise AccessError(f"org id {org_id!r} is not valid")
    generated = ensure_user(settings, principal, password)
    ensure_topics(settings.kafka, [topic], settings.topic_partitions, configs={topic: config})
    bindings = [_binding(principal, topic, op) for op in operations] + (extra or [])
    admin = _admin(settings)  # held: a collected client cancels its futures
    for future in admin.create_acls(bindings).values():
        try:
            future.result(timeout=_TIMEOUT)
        except KafkaException as exc:
            raise AccessError(f"could not grant {principal!r} on {topic}: {exc}") from exc
    return generated


def revoke_producer(settings: Settings, principal: str, org_id: str) -> int:
    """Remove ``principal``'s ACLs on the org's topic; return how many were removed."""
    topic = org_topic(settings.topic_lead_events, org_id)
    filters = [
        AclBindingFilter(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for op in _OPERATIONS
    ]
    removed = 0
    admin = _admin(settings)
    for future in admin.delete_acls(filters).values():
        try:
            removed += len(future.result(timeout=_TIMEOUT))
        except KafkaException as exc:
            raise AccessError(f"could not revoke {principal!r} on {topic}: {exc}") from exc
    return removed


def producer_grants(settings: Settings) -> list[ProducerGrant]:
    """Every principal allowed to WRITE an org topic, as the broker's ACLs say."""
    everything = AclBindingFilter(
        ResourceType.TOPIC,
        None,
        ResourcePatternType.LITERAL,
        None,
        None,
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    admin = _admin(settings)
    try:
        bindings = admin.describe_acls(everything).result(timeout=_TIMEOUT)
    except KafkaException as exc:
        raise AccessError(f"could not read the ACLs: {exc}") from exc
    grants = []
    for b in bindings:
        org = org_of_topic(settings.topic_lead_events, b.name)
        if org is not None and b.principal.startswith("User:"):
            grants.append(ProducerGrant(b.principal.removeprefix("User:"), org, b.name))
    return sorted(grants, key=lambda g: (g.org_id, g.principal))


def _binding(principal: str, topic: str, operation: AclOperation) -> AclBinding:
    return AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        f"User:{principal}",
        "*",
        operation,
        AclPermissionType.ALLOW,
    )
