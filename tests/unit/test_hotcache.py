"""The hot-read cache's rules and the change-notice format, without services."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from projections import changes
from query_api.hotcache import MAX_BOARDS_PER_ORG, ReadCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def live_cache(max_entries: int = 100, ttl: float = 60.0) -> tuple[ReadCache, Clock]:
    clock = Clock()
    cache = ReadCache(max_entries, ttl, clock)
    cache.subscribed("postgres")
    cache.subscribed("redis")
    return cache, clock


def test_nothing_is_cached_until_both_read_models_are_heard() -> None:
    cache = ReadCache(100, 60.0)
    cache.put_lead("o", "l", b"1", cache.epoch)
    assert cache.lead("o", "l") is None
    cache.subscribed("postgres")
    cache.put_lead("o", "l", b"1", cache.epoch)
    assert cache.lead("o", "l") is None
    cache.subscribed("redis")
    cache.put_lead("o", "l", b"1", cache.epoch)
    assert cache.lead("o", "l") == b"1"


def test_a_fill_read_before_an_eviction_is_dropped() -> None:
    cache, _ = live_cache()
    ticket = cache.epoch  # the request starts its queries ...
    cache.notice("redis", '["o","other"]')  # ... any change lands meanwhile ...
    cache.put_lead("o", "l", b"old", ticket)  # ... its answer may predate it
    assert cache.lead("o", "l") is None
    cache.put_lead("o", "l", b"new", cache.epoch)
    assert cache.lead("o", "l") == b"new"


def test_notices_evict_their_leads_and_redis_notices_the_org_leaderboards() -> None:
    cache, _ = live_cache()
    for org, lead in (("a", "1"), ("a", "2"), ("b", "1")):
        cache.put_lead(org, lead, b"x", cache.epoch)
    cache.put_board("a", b"limit=10", b"A", cache.epoch)
    cache.put_board("b", b"", b"B", cache.epoch)
    cache.notice("postgres", '["a","1"]')
    assert cache.lead("a", "1") is None and cache.lead("a", "2") == b"x"
    assert cache.board("a", b"limit=10") == b"A"  # leaderboards come from Redis only
    cache.notice("redis", '["a","2"]')
    assert cache.lead("a", "2") is None and cache.lead("b", "1") == b"x"
    assert cache.board("a", b"limit=10") is None and cache.board("b", b"") == b"B"


def test_a_flush_notice_and_a_lost_listener_empty_the_cache() -> None:
    cache, _ = live_cache()
    cache.put_lead("a", "1", b"x", cache.epoch)
    cache.notice("redis", changes.FLUSH)
    assert cache.lead("a", "1") is None
    cache.put_lead("a", "1", b"x", cache.epoch)
    ticket = cache.epoch
    cache.unsubscribed("redis")
    assert cache.lead("a", "1") is None
    assert not cache.enabled
    cache.subscribed("redis")
    cache.put_lead("a", "1", b"stale", ticket)  # begun before the loss
    assert cache.lead("a", "1") is None


def test_an_unreadable_notice_flushes_rather_than_guessing() -> None:
    cache, _ = live_cache()
    cache.put_lead("a", "1", b"x", cache.epoch)
    cache.notice("redis", b"{not json")
    assert cache.lead("a", "1") is None


def test_entries_expire_and_the_cache_is_bounded() -> None:
    cache, clock = live_cache(max_entries=3, ttl=10.0)
    for lead in "1234":
        cache.put_lead("a", lead, lead.encode(), cache.epoch)
    assert cache.lead("a", "1") is None  # least recently stored goes first
    assert [cache.lead("a", x) for x in "234"] == [b"2", b"3", b"4"]
    clock.now = 10.5
    assert cache.lead("a", "2") is None
    for n in range(MAX_BOARDS_PER_ORG + 1):
        cache.put_board("a", f"limit={n + 1}".encode(), b"b", cache.epoch)
    assert cache.status()["leaderboards"] <= MAX_BOARDS_PER_ORG


def test_a_cache_of_size_zero_is_off() -> None:
    cache = ReadCache(0, 60.0)
    cache.subscribed("postgres")
    cache.subscribed("redis")
    cache.put_lead("a", "1", b"x", cache.epoch)
    assert not cache.enabled and cache.lead("a", "1") is None


ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=128)


@given(st.lists(st.tuples(ids, ids), max_size=300))
def test_notices_name_every_pair_and_fit_a_postgres_notify(pairs: list[tuple[str, str]]) -> None:
    payloads = changes.encode(pairs)
    assert all(len(p.encode()) <= changes.MAX_PAYLOAD for p in payloads)
    decoded = [pair for p in payloads for pair in (changes.decode(p) or [])]
    assert decoded == pairs
