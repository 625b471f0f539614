from __future__ import annotations

from collections.abc import Iterator

import pytest

from leadscore.eventstore import LeadStore, open_store
from leadscore.settings import Settings
from tests.unit.test_eventstore import LeadStoreContract

pytestmark = pytest.mark.integration


class TestPostgresLeadStore(LeadStoreContract):
    @pytest.fixture
    def store(self, settings: Settings) -> Iterator[LeadStore]:
        s = open_store(settings.pg_dsn, cache_size=100)
        yield s
        s.close()
