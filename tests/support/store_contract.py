"""The assertions every LeadStore backend must pass: a backend's test class subclasses
``LeadStoreContract`` and provides a ``store`` fixture (in memory in tests/unit,
PostgreSQL in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from eventsourcing.domain import Snapshot

from adapters.eventstore import SCORED_TOPIC, ConcurrentWriteError, LeadStore
from domain.events import ActivityKind
from domain.lead import Lead, lead_aggregate_id
from domain.processing import apply_batch, event_time
from tests.support.factories import T0, FixedScorer, activity, created


class LeadStoreContract:
    """Assertions every LeadStore backend must pass."""

    @pytest.fixture
    def store(self) -> Iterator[LeadStore]:
        raise NotImplementedError  # each backend provides its own

    def test_saved_batch_reloads_and_is_logged_in_order(self, store: LeadStore) -> None:
        events = [
            created(lead="a"),
            created(lead="b"),
            activity(ActivityKind.DEMO_REQUEST, lead="a"),
        ]
        out = apply_batch(
            events, store.load({lead_aggregate_id("org-1", "a")}), FixedScorer(), event_time, T0
        )
        store.save_leads(list(out.touched.values()))
        store.evict(out.touched)
        loaded = store.load(out.touched)
        assert {lead.lead_id for lead in loaded.values() if lead} == {"a", "b"}
        notes = store.notifications(0, 100)
        assert [n.id for n in notes] == sorted(n.id for n in notes)
        assert len(notes) == 3 + 2  # three lead-events, two scores
        scored = store.notifications(0, 100, topics=[SCORED_TOPIC])
        assert len(scored) == 2
        assert store.max_position() == notes[-1].id

    def test_missing_lead_loads_as_none(self, store: LeadStore) -> None:
        agg = lead_aggregate_id("org-1", "nobody")
        assert store.load([agg]) == {agg: None}

    def test_conflicting_writer_is_detected(self, store: LeadStore) -> None:
        first = apply_batch([created(lead="c")], {}, FixedScorer(), event_time, T0)
        store.save_leads(list(first.touched.values()))
        agg = lead_aggregate_id("org-1", "c")
        store.evict([agg])
        mine = store.load([agg])[agg]
        store.evict([agg])
        theirs = store.load([agg])[agg]
        assert mine is not None and theirs is not None and mine is not theirs
        theirs.handle(activity(lead="c"))
        store.save_leads([theirs])
        mine.handle(activity(lead="c"))
        with pytest.raises(ConcurrentWriteError):
            store.save_leads([mine])

    def test_stored_event_ids_answers_for_ids_a_lead_has_forgotten(self, store: LeadStore) -> None:
        n = Lead.RECENT_EVENT_IDS + 4
        events = [created(lead="d")] + [
            activity(lead="d", at=T0 + timedelta(minutes=m)) for m in range(n)
        ]
        out = apply_batch(events, {}, FixedScorer(), event_time, T0)
        store.save_leads(list(out.touched.values()))
        agg = lead_aggregate_id("org-1", "d")
        store.evict([agg])
        lead = store.load([agg])[agg]
        assert lead is not None and lead.knows_applied(events[0].event_id) is None
        stored = {(agg, e.event_id) for e in events}
        other_lead = (lead_aggregate_id("org-1", "e"), events[0].event_id)
        asked = [*stored, (agg, "never-sent"), other_lead]
        assert store.stored_event_ids(asked) == stored
        assert store.stored_event_ids([]) == set()

    def test_a_long_lead_is_rebuilt_from_its_latest_snapshot(self, store: LeadStore) -> None:
        store.snapshot_interval = 10
        agg, other = lead_aggregate_id("org-1", "s"), lead_aggregate_id("org-1", "t")
        events = [created(lead="s"), created(lead="t")] + [
            activity(lead="s", at=T0 + timedelta(minutes=m)) for m in range(30)
        ]
        for start in range(0, len(events), 4):  # at most 5 new versions a save
            chunk = events[start : start + 4]
            out = apply_batch(chunk, store.load([agg, other]), FixedScorer(), event_time, T0)
            store.save_leads(list(out.touched.values()))
        lead = store.load([agg])[agg]
        assert lead is not None and store.snapshots is not None
        taken = [s.originator_version for s in store.snapshots.get(agg)]
        assert len(taken) == lead.version // 10 and taken == sorted(taken)
        assert all(v % 10 < 5 for v in taken)  # taken by the save that crossed each ten
        assert not list(store.snapshots.get(other))  # two versions: none due

        def state(x: Lead | None) -> dict[str, Any]:
            assert x is not None
            return {k: v for k, v in vars(x).items() if k != "_pending_events"}

        store.evict([agg, other])
        assert state(store.load([agg, other])[agg]) == state(lead)  # one query for many
        store.evict([agg])
        assert state(store.load([agg])[agg]) == state(lead)  # the library's get

        # A snapshot at the current version, doctored: what loads is built from it.
        assert lead.version % 10 != 0  # (no snapshot there yet)
        doctored = Snapshot.take(lead)
        doctored.state["profile"] = {**lead.profile, "company": "as in the snapshot"}
        store.snapshots.put([doctored])
        for ids in ([agg, other], [agg]):
            store.evict(ids)
            loaded = store.load(ids)[agg]
            assert loaded is not None and loaded.profile["company"] == "as in the snapshot"
            assert loaded.version == lead.version

    def test_no_snapshots_with_an_interval_of_zero(self, store: LeadStore) -> None:
        store.snapshot_interval = 0
        events = [created(lead="z")] + [
            activity(lead="z", at=T0 + timedelta(minutes=m)) for m in range(30)
        ]
        out = apply_batch(events, {}, FixedScorer(), event_time, T0)
        store.save_leads(list(out.touched.values()))
        assert store.snapshots is not None
        assert not list(store.snapshots.get(lead_aggregate_id("org-1", "z")))

    # -- personal data, sealed per lead (adapters/lead_keys.py) ----------------------

    def _raw_states(self, store: LeadStore, agg: Any) -> bytes:
        """Every stored byte of a lead: its events and its snapshots."""
        states = [e.state for e in store.recorder.select_events(agg)]
        if store.snapshots is not None:
            states += [e.state for e in store.snapshots.recorder.select_events(agg)]
        return b"\n".join(states)

    def _pii_lead(self, store: LeadStore, lead: str) -> Any:
        from domain.events import EventType, LeadEvent
        from tests.support.factories import next_id

        store.snapshot_interval = 2  # so a snapshot is stored too
        ev = LeadEvent(
            next_id(), EventType.LEAD_CREATED, "org-1", lead, T0,
            {"email": f"zq-{lead}@privacy.example", "first_name": f"Zelda-{lead}",
             "title": "VP of Sales", "employees": 900, "country": "DE"},
            attributes={"phone": f"+49-{lead}-555"},
        )  # fmt: skip
        out = apply_batch([ev], {}, FixedScorer(), event_time, T0)
        upd = LeadEvent(
            next_id(), EventType.LEAD_UPDATED, "org-1", lead, T0 + timedelta(hours=1),
            {"last_name": f"Quux-{lead}"},
        )  # fmt: skip
        out2 = apply_batch([upd], dict(out.touched), FixedScorer(), event_time, T0)
        store.save_leads(list(out2.touched.values()))
        return lead_aggregate_id("org-1", lead)

    def test_personal_data_is_stored_sealed_and_reads_back(self, store: LeadStore) -> None:
        from tests.support.factories import next_id

        lead = next_id()
        agg = self._pii_lead(store, lead)
        raw = self._raw_states(store, agg)
        assert store.snapshots is not None and store.snapshots.recorder.select_events(agg)
        for secret in (f"zq-{lead}", f"Zelda-{lead}", f"Quux-{lead}", f"+49-{lead}", "VP of"):
            assert secret.encode() not in raw
        assert b'"country":"DE"' in raw  # scoring fields stay clear
        store.evict([agg])
        loaded = store.load([agg])[agg]
        assert loaded is not None
        assert loaded.profile["email"] == f"zq-{lead}@privacy.example"
        assert loaded.profile["last_name"] == f"Quux-{lead}"
        assert loaded.attributes == {"phone": f"+49-{lead}-555"}
        # ...and from the events alone, without the snapshot.
        events = [store.to_event(e) for e in store.recorder.select_events(agg)]
        assert events[0].profile["first_name"] == f"Zelda-{lead}"

    def test_a_forgotten_lead_reads_and_stays_without_personal_data(self, store: LeadStore) -> None:
        from domain.events import EventType, LeadEvent
        from tests.support.factories import next_id

        lead = next_id()
        agg = self._pii_lead(store, lead)
        assert store.keys.shred(agg)
        store.evict([agg])
        before = store.load([agg])[agg]
        assert before is not None
        assert "email" not in before.profile and before.attributes == {}
        assert before.profile["country"] == "DE"
        before.forget("test", T0 + timedelta(hours=2))
        store.save_leads([before])
        again = LeadEvent(
            next_id(), EventType.LEAD_UPDATED, "org-1", lead, T0 + timedelta(hours=3),
            {"email": f"back-{lead}@privacy.example", "employees": 950},
            attributes={"phone": f"+49-{lead}-556"},
        )  # fmt: skip
        out = apply_batch([again], store.load([agg]), FixedScorer(), event_time, T0)
        store.save_leads(list(out.touched.values()))
        store.evict([agg])
        after = store.load([agg])[agg]
        assert after is not None and after.forgotten
        assert "email" not in after.profile and after.profile["employees"] == 950
        raw = self._raw_states(store, agg)
        assert f"back-{lead}".encode() not in raw and f"+49-{lead}".encode() not in raw
        assert not store.keys.shred(agg)  # nothing left to destroy

    def test_lead_keys_rotate_to_the_newest_kek(self, store: LeadStore) -> None:
        import os

        from adapters.lead_keys import KeyEncryptionKeys, LeadKeyError, LeadKeys
        from tests.support.factories import next_id

        old, new = os.urandom(32), os.urandom(32)
        table = store.keys.table
        store.keys = store.pii_mapper.keys = LeadKeys(KeyEncryptionKeys([old]), table)
        lead = next_id()
        agg = self._pii_lead(store, lead)
        both = LeadKeys(KeyEncryptionKeys([new, old]), table)
        store.keys = store.pii_mapper.keys = both
        store.evict([agg])
        loaded = store.load([agg])[agg]
        assert loaded is not None and loaded.profile["first_name"] == f"Zelda-{lead}"
        assert both.rotate() >= 1
        only_new = LeadKeys(KeyEncryptionKeys([new]), table)
        store.keys = store.pii_mapper.keys = only_new
        store.evict([agg])
        loaded = store.load([agg])[agg]
        assert loaded is not None and loaded.profile["first_name"] == f"Zelda-{lead}"
        with pytest.raises(LeadKeyError):  # the old KEK alone no longer unwraps it
            LeadKeys(KeyEncryptionKeys([old]), table).for_read(agg)
