"""Normalising what people type into forms: job titles, e-mail domains, sizes."""

from __future__ import annotations

import re

# Ordinal seniority: higher is more senior. Checked in order, first match wins, so
# "Assistant to the VP" is caught by the assistant rule before "vp", and
# "Vice President" by the VP rule before "president".
_SENIORITY_RULES: tuple[tuple[int, re.Pattern[str]], ...] = (
    (0, re.compile(r"\b(student|intern|trainee|apprentice|assistant to)\b")),
    (5, re.compile(r"\b(vp|svp|evp|vice[ -]president)\b")),
    (
        6,
        re.compile(
            r"\b(ceo|cto|cfo|coo|cmo|cio|ciso|cro|chro|chief|founder|co-founder|president"
            r"|managing director|(?<!product )owner)\b"
        ),
    ),
    (4, re.compile(r"\b(head of|director|dir\.?)\b")),
    (3, re.compile(r"\b(manager|mgr|lead|principal)\b")),
    (2, re.compile(r"\b(senior|sr\.?|specialist|engineer|analyst|consultant|architect)\b")),
    (1, re.compile(r"\b(associate|coordinator|junior|jr\.?|representative|rep|assistant)\b")),
)
SENIORITY_UNKNOWN = 1

_DEPARTMENT_RULES: tuple[tuple[int, re.Pattern[str]], ...] = (
    (1, re.compile(r"\b(engineer\w*|developer|devops|software|cto|architect|r&d|technical)\b")),
    (2, re.compile(r"\b(it|cio|ciso|infrastructure|security|systems|network)\b")),
    (3, re.compile(r"\b(marketing|cmo|growth|demand gen|brand|content)\b")),
    (4, re.compile(r"\b(sales|cro|account executive|business development|bdr|sdr|revenue)\b")),
    (5, re.compile(r"\b(financ\w*|cfo|controller|account(ing|ant)|procurement)\b")),
    (7, re.compile(r"\b(hr|chro|people|talent|recruit\w*)\b")),
    (6, re.compile(r"\b(operations|ops|coo|supply chain|logistics)\b")),
    (8, re.compile(r"\b(ceo|founder|co-founder|(?<!product )owner|president|general manager)\b")),
)
DEPARTMENTS = (
    "other",
    "engineering",
    "it",
    "marketing",
    "sales",
    "finance",
    "operations",
    "hr",
    "executive",
)

FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "yahoo.com",
        "hotmail.com",
        "outlook.com",
        "aol.com",
        "icloud.com",
        "gmx.de",
        "web.de",
        "mail.ru",
        "yandex.ru",
        "protonmail.com",
        "live.com",
    }
)

INDUSTRIES = (
    "other",
    "software",
    "fintech",
    "healthcare",
    "manufacturing",
    "retail",
    "education",
    "logistics",
    "media",
    "telecom",
    "government",
    "consulting",
)
SOURCES = (
    "other",
    "organic",
    "paid_search",
    "paid_social",
    "referral",
    "event",
    "outbound",
    "partner",
    "content",
    "webinar",
)
COUNTRIES = ("other", "US", "GB", "DE", "FR", "NL", "CA", "AU", "IN", "BR", "JP", "ES")


def seniority(title: str | None) -> int:
    if not title:
        return SENIORITY_UNKNOWN
    t = title.lower()
    for level, pattern in _SENIORITY_RULES:
        if pattern.search(t):
            return level
    return SENIORITY_UNKNOWN


def department(title: str | None) -> int:
    if not title:
        return 0
    t = title.lower()
    for code, pattern in _DEPARTMENT_RULES:
        if pattern.search(t):
            return code
    return 0


def is_free_mail(email: str | None) -> bool:
    if not email or "@" not in email:
        return False
    return email.rsplit("@", 1)[1].strip().lower() in FREE_MAIL_DOMAINS


def code_of(value: str | None, vocabulary: tuple[str, ...]) -> int:
    """Index of a value in a closed vocabulary; 0 ("other") when absent or unknown."""
    if not value:
        return 0
    v = value.strip().lower()
    for i, item in enumerate(vocabulary):
        if item.lower() == v:
            return i
    return 0
