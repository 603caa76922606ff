"""Identity stitching in the pure core: which identity names a person, what a merge
makes of two states, and the backtest's persons.

Contract: docs/DESIGN.md, section "Identity stitching".

The oracle of a merge: a person whose events arrive under two identities, linked by
some of them, ends with the state one profile holding all its events has (counts, sums,
times, the feature vector), whatever order the persons were merged in.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from models.backtest import run_backtest
from models.config import Config, ConfigError, parse_config
from models.events import InvalidEvent, ranked_identities, validate_event
from models.state import ProfileState
from models.stitching import MAX_IDENTITIES, absorb, winner
from models.synthetic import generate_events
from tests.harness import CONFIG

NAMESPACES = ("CRMID", "Email", "ECID")
SHIPPED = 'namespace = "ECID"\n'


def with_identity(table: str) -> str:
    """The shipped configuration with ``table`` as its ``[identity]`` keys."""
    text = CONFIG.read_text()
    assert SHIPPED in text
    return text.replace(SHIPPED, table + "\n", 1)


def stitching_config(extra: str = "") -> Config:
    return parse_config(with_identity('namespaces = ["CRMID", "Email", "ECID"]\n' + extra))


def plain_config() -> Config:
    return parse_config(CONFIG.read_text())


# ---- which identity names a profile ---------------------------------------------------


def test_the_highest_ranked_namespace_names_the_profile_its_primary_first() -> None:
    body = {
        "identityMap": {
            "ECID": [{"id": "e-1", "primary": True}],
            "Email": [{"id": "b@x.org"}, {"id": "a@x.org", "primary": True}],
            "Phone": [{"id": "+1"}],
        }
    }
    assert ranked_identities(body, NAMESPACES) == [(1, "a@x.org"), (1, "b@x.org"), (2, "e-1")]
    event = validate_event(
        {**body, "_id": "x", "timestamp": 1, "eventType": "web"}, identity_namespaces=NAMESPACES
    )
    assert event.profile_id == "a@x.org"


def test_an_event_of_other_namespaces_only_has_no_identity() -> None:
    with pytest.raises(InvalidEvent) as err:
        ranked_identities({"identityMap": {"Phone": [{"id": "+1"}]}}, NAMESPACES)
    assert err.value.reason == "no_identity"
    with pytest.raises(InvalidEvent) as err:
        ranked_identities({"identityMap": {"ECID": [{"id": ""}]}}, NAMESPACES)
    assert err.value.reason == "wrong_type"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('namespace = "ECID"\nnamespaces = ["ECID"]', "not both"),
        ('namespaces = ["ECID", "ECID"]', "distinct"),
        ('namespaces = "ECID"', "list"),
        ('namespaces = ["ECID"]\nmax_identities = 51', "from 2 to 50"),
        ('namespaces = ["ECID"]\nmax_identities = 1', "from 2 to 50"),
        ('namespaces = ["ECID"]\nmax_identity = 5', "unknown key"),
    ],
)
def test_a_bad_identity_table_is_refused_with_the_fix(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(with_identity(table))


def test_the_winner_is_the_best_rank_then_the_smaller_id() -> None:
    assert winner((2, "a"), (1, "z")) == (1, "z")
    assert winner((1, "b"), (1, "a")) == (1, "a")
    assert winner((0, "c"), (0, "c")) == (0, "c")


# ---- merges ------------------------------------------------------------------------------


def split_person(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The events of ``events`` with each person's identity split: a device id
    (``ECID``), an email and for some a CRM id, each event carrying one of them, a few
    two or three (the links), in random places."""
    rng = random.Random(seed)
    out = []
    for e in events:
        pid = e["identityMap"]["ECID"][0]["id"]
        n = int(pid.split("-")[1])
        ids = {"ECID": pid, "Email": f"{pid}@mail.example"}
        if n % 3 == 0:
            ids["CRMID"] = f"crm-{n}"
        names = list(ids)
        k = rng.choices([1, 2, 3], weights=[10, 2, 1])[0]
        chosen = rng.sample(names, min(k, len(names)))
        out.append({**e, "identityMap": {ns: [{"id": ids[ns]}] for ns in chosen}})
    return out


def person_of(state_id: str) -> str:
    """The original profile of a canonical id."""
    if state_id.startswith("crm-"):
        return "p-" + state_id[4:]
    return state_id.split("@")[0]


def core(state: ProfileState) -> tuple:
    return (state.first_ts, state.ref_ts, state.n_events, state.counts, state.last_ts)


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-5) for x, y in zip(a, b)
    )


def test_a_stitched_person_holds_what_one_profile_of_all_its_events_holds() -> None:
    events = generate_events(profiles=120, days=90, seed=11)
    whole = run_backtest(events, plain_config())
    stitched_events = split_person(events, seed=11)
    result = run_backtest(stitched_events, stitching_config())
    persons = result.persons
    assert persons is not None and persons.merges > 0
    fz = result.engine.featurizer
    by_person: dict[str, list[str]] = {}
    for sid in result.states:
        by_person.setdefault(person_of(sid), []).append(sid)
    linked = 0
    for pid, expected in whole.states.items():
        ids = by_person[pid]
        if len(ids) > 1:
            continue  # never linked: two persons, as the data says
        (sid,) = ids
        state = result.states[sid]
        linked += bool(state.aliases)
        assert core(state) == core(expected), pid
        assert close(state.decayed, expected.decayed), pid
        assert close(state.values, expected.values) and close(
            state.value_totals, expected.value_totals
        )
        assert state.gap_ms == expected.gap_ms
        assert close(fz.vector(state), fz.vector(expected)), pid
        # the canonical id is the person's best identity among those its events showed
        seen = {
            i
            for e in stitched_events
            for ns, entries in e["identityMap"].items()
            for i in [entries[0]["id"]]
            if person_of(i) == pid
        }
        assert (
            sid
            == min(
                ranked_identities(
                    {
                        "identityMap": {
                            ns: [{"id": i}] for i in seen for ns in NAMESPACES if kind(i) == ns
                        }
                    },
                    NAMESPACES,
                )
            )[1]
        )
        assert set(state.aliases) == seen - {sid}
    assert linked > 50
    assert result.n_events == whole.n_events


def kind(identity: str) -> str:
    return "CRMID" if identity.startswith("crm-") else "Email" if "@" in identity else "ECID"


def test_the_order_of_the_merges_does_not_change_the_person() -> None:
    """Three profiles of one person merged in every order: the same canonical id, the
    same counters and aliases."""
    config = stitching_config()
    parts = {
        "e-1": [("e-1", "ECID", 1_000, "commerce.productViews")],
        "a@x": [("a@x", "Email", 2_000, "commerce.purchases")],
        "crm-1": [("crm-1", "CRMID", 3_000, "web.webpagedetails.pageViews")],
    }
    results = []
    for order in (["e-1", "a@x", "crm-1"], ["crm-1", "e-1", "a@x"], ["a@x", "crm-1", "e-1"]):
        events = []
        for pid in order:
            for ident, ns, ts, kind_ in parts[pid]:
                events.append(event(f"{pid}-0", ts, kind_, {ns: ident}))
        # the links come after, in this order: the first two, then the third
        (a, b, c) = order
        events.append(
            event("link-1", 10_000, "web.webpagedetails.pageViews", {**ns_of(a), **ns_of(b)})
        )
        events.append(
            event("link-2", 11_000, "web.webpagedetails.pageViews", {**ns_of(b), **ns_of(c)})
        )
        result = run_backtest(events, config)
        (sid,) = result.states
        state = result.states[sid]
        results.append((sid, core(state), sorted(state.aliases), state.decayed))
    assert results[0][0] == "crm-1"
    assert all(r[:3] == results[0][:3] for r in results)
    assert all(close(r[3], results[0][3]) for r in results)


def ns_of(identity: str) -> dict[str, str]:
    return {kind(identity): identity}


def event(eid: str, ts: int, kind_: str, ids: dict[str, str]) -> dict[str, Any]:
    return {
        "_id": eid,
        "timestamp": ts,
        "eventType": kind_,
        "identityMap": {ns: [{"id": i}] for ns, i in ids.items()},
    }


def test_a_link_past_the_cap_is_refused_and_the_event_stays_with_its_profile() -> None:
    config = stitching_config("max_identities = 3\n")
    events = [
        event("a", 1_000, "web.webpagedetails.pageViews", {"Email": "m@x", "ECID": "d-1"}),
        event("b", 2_000, "web.webpagedetails.pageViews", {"Email": "m@x", "ECID": "d-2"}),
        event("c", 3_000, "web.webpagedetails.pageViews", {"ECID": "d-3"}),
        event("d", 4_000, "web.webpagedetails.pageViews", {"ECID": "d-3", "Email": "m@x"}),
    ]
    result = run_backtest(events, config)
    assert result.persons is not None and result.persons.refused == 1
    assert sorted(result.states) == ["d-3", "m@x"]
    assert sorted(result.states["m@x"].aliases) == ["d-1", "d-2"]
    # the refused link's event is applied to its own profile id (its best identity)
    assert result.states["m@x"].n_events == 3 and result.states["d-3"].n_events == 1
    assert MAX_IDENTITIES == 50


def test_a_state_with_aliases_round_trips_and_one_without_keeps_its_bytes() -> None:
    result = run_backtest(
        [event("a", 1_000, "commerce.purchases", {"Email": "m@x", "ECID": "d-1"})],
        stitching_config(),
    )
    state = result.states["m@x"]
    assert state.aliases == ["d-1"] and state.rank == 1
    goals = list(state.goals)
    again = ProfileState.from_bytes(state.to_bytes(), goals)
    assert again == state and again.aliases == ["d-1"] and again.rank == 1
    plain = run_backtest([event("a", 1_000, "commerce.purchases", {"ECID": "d-1"})], plain_config())
    raw = plain.states["d-1"].to_bytes()
    assert ProfileState.from_bytes(raw, goals).to_bytes() == raw and raw.count(b"[") > 0
    assert len(orjson_list(raw)) == 13


def orjson_list(raw: bytes) -> list:
    import orjson

    return orjson.loads(raw)


def test_absorbing_keeps_both_pending_snapshots_and_the_winners_score() -> None:
    config = stitching_config()
    a = run_backtest([event("a", 1_000, "commerce.productViews", {"ECID": "d-1"})], config)
    b = run_backtest([event("b", 5_000, "commerce.productViews", {"Email": "m@x"})], config)
    fz = a.engine.featurizer
    mine, theirs = b.states["m@x"], a.states["d-1"]
    pending_before = {
        g: len(s.pending) + len(theirs.goals[g].pending) for g, s in mine.goals.items()
    }
    served = {g: s.probability for g, s in mine.goals.items()}
    merged = absorb(mine, theirs, (1, "m@x"), "d-1", fz)
    assert {g: len(s.pending) for g, s in merged.goals.items()} == pending_before
    assert all(
        [p.open_ts for p in s.pending] == sorted(p.open_ts for p in s.pending)
        for s in merged.goals.values()
    )
    assert {g: s.probability for g, s in merged.goals.items()} == served
    assert merged.n_events == 2 and merged.first_ts == 1_000 and merged.ref_ts == 5_000
    assert merged.gap_ms == 4_000 and merged.aliases == ["d-1"]
    assert theirs.n_events == 1  # read, never changed


DAY = 86_400_000


def test_a_goal_event_of_one_part_decides_the_other_parts_snapshots() -> None:
    """A snapshot opened on the device profile, a purchase on the CRM profile a day
    later, then the link: the snapshot is a positive, as in one profile of the events."""
    t0 = 1_700_000_000_000

    def events(split: bool) -> list[dict[str, Any]]:
        device, crm = {"ECID": "d-1"}, ({"CRMID": "c-1"} if split else {"ECID": "d-1"})
        both = {"CRMID": "c-1", "ECID": "d-1"} if split else {"ECID": "d-1"}
        buy = event("e2", t0 + DAY, "commerce.purchases", crm)
        buy["commerce"] = {"order": {"priceTotal": 10}}
        return [
            event("e1", t0, "commerce.productViews", device),
            buy,
            event("e3", t0 + 2 * DAY, "web.webpagedetails.pageViews", both),
            event("e4", t0 + 40 * DAY, "web.webpagedetails.pageViews", crm),
        ]

    def labels(result: Any) -> list[tuple[int, int]]:
        return sorted((e.prediction_ts, e.label) for e in result.examples if e.goal == "conversion")

    whole = run_backtest(events(False), plain_config())
    stitched = run_backtest(events(True), stitching_config())
    # the device's snapshot (the parts' own later snapshots differ: opened apart)
    assert (t0, 1) in labels(whole) and (t0, 1) in labels(stitched)


def test_a_re_sent_event_of_the_newer_part_is_still_a_duplicate_after_a_merge() -> None:
    t0, minute = 1_700_000_000_000, 60_000
    view = "web.webpagedetails.pageViews"

    def events(split: bool) -> list[dict[str, Any]]:
        crm, device = ({"CRMID": "c-1"} if split else {"ECID": "d-1"}), {"ECID": "d-1"}
        link = {"CRMID": "c-1", "ECID": "d-1"} if split else device
        out = [event(f"c{i}", t0 + i * minute, view, crm) for i in range(8)]
        out += [event(f"d{i}", t0 + DAY + i * minute, view, device) for i in range(8)]
        return out + [
            event("link", t0 + 2 * DAY, view, link),
            event("d7", t0 + 2 * DAY + 1, view, device),
        ]

    whole = run_backtest(events(False), plain_config())
    stitched = run_backtest(events(True), stitching_config())
    assert whole.n_duplicates == stitched.n_duplicates == 1
    assert stitched.states["c-1"].n_events == whole.states["d-1"].n_events == 17
