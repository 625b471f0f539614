from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from domain.events import ActivityKind
from domain.features import FEATURE_NAMES, features
from domain.firmographics import department, is_free_mail, seniority
from domain.lead import Lead
from tests.support.factories import T0, activity, created

kinds = st.sampled_from(list(ActivityKind))
offsets = st.integers(min_value=0, max_value=90 * 24)


def build(history: list[tuple[ActivityKind, int]]) -> Lead:
    lead = Lead.open(created())
    for kind, hours in sorted(history, key=lambda h: h[1]):
        lead.handle(activity(kind, at=T0 + timedelta(hours=hours)))
    return lead


@given(st.lists(st.tuples(kinds, offsets), max_size=30), st.integers(0, 400))
def test_features_are_finite_and_complete(
    history: list[tuple[ActivityKind, int]], days: int
) -> None:
    lead = build(history)
    row = features(lead, T0 + timedelta(days=days))
    assert len(row) == len(FEATURE_NAMES)
    assert all(isinstance(x, float) and x == x and abs(x) < 1e9 for x in row)


@given(st.lists(st.tuples(kinds, offsets), min_size=1, max_size=30), st.integers(1, 200))
def test_engagement_never_grows_while_a_lead_is_quiet(
    history: list[tuple[ActivityKind, int]], quiet_days: int
) -> None:
    lead = build(history)
    assert lead.last_activity_at is not None
    i = FEATURE_NAMES.index("engagement_decayed")
    before = features(lead, lead.last_activity_at)[i]
    after = features(lead, lead.last_activity_at + timedelta(days=quiet_days))[i]
    assert after <= before + 1e-9
    assert after < before or before == 0


@given(st.lists(st.tuples(kinds, offsets), max_size=20))
def test_features_depend_only_on_state_and_clock(history: list[tuple[ActivityKind, int]]) -> None:
    lead = build(history)
    now = T0 + timedelta(days=100)
    assert features(lead, now) == features(lead, now)


def test_counts_follow_activities() -> None:
    lead = build([(ActivityKind.DEMO_REQUEST, 1), (ActivityKind.DEMO_REQUEST, 2)])
    row = features(lead, T0 + timedelta(days=1))
    assert row[FEATURE_NAMES.index("n_demo_request")] == 2.0
    assert row[FEATURE_NAMES.index("n_page_view")] == 0.0


def test_titles_are_normalised_the_way_people_write_them() -> None:
    assert seniority("CTO & Co-Founder") > seniority("VP Sales") > seniority("Director of IT")
    assert (
        seniority("Director of IT") > seniority("Marketing Manager") > seniority("Marketing Intern")
    )
    assert seniority("Vice President, Marketing") == seniority("VP Sales")
    assert seniority("student") == 0
    assert seniority("Product Owner") < seniority("Owner") == seniority("Managing Director")
    assert seniority("CHRO") == seniority("CEO")
    assert department("Financial Analyst") == department("Senior Accountant") == department("CFO")
    assert department("People Operations") == department("HR Business Partner")
    assert department("Sr. Software Engineer") == department("Head of Engineering")
    assert department("VP Sales") != department("Vice President, Marketing")


def test_free_mail() -> None:
    assert is_free_mail("someone@GMAIL.com")
    assert not is_free_mail("ada@example.io")
    assert not is_free_mail(None)
