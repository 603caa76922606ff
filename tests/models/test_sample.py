"""Percentiles over profiles, the same everywhere (issue 17 item 5).

The trainer's sample of profiles (``models/sample.py``) does not depend on the order the
examples arrive in and survives a restart; a score's percentile is a function of the
model version and the probability alone (``LinearModel.percentile``); on a backtest the
buckets split the profiles as the thresholds say.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest

from models.backtest import BacktestResult, run_backtest
from models.config import load_config, parse_config
from models.engine import Engine
from models.events import Event
from models.model import LinearModel, transform
from models.outcome import Example, Outcome
from models.sample import ProfileSample, cut_points, profile_hash, vectors_at
from models.state import ProfileState
from models.synthetic import generate_events
from models.training import Trainer
from tests.harness import CONFIG

CFG = load_config(CONFIG)


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    return run_backtest(generate_events(profiles=1500, days=300, seed=7), CFG)


def _examples(n: int, profiles: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    d = 3
    out = []
    for i in range(n):
        pid = f"p-{rng.randrange(profiles)}"
        ts = rng.randrange(1_000) * 1000
        features = [round(rng.random() * 10, 4) for _ in range(d)]
        out.append(
            Example(f"{pid}|g|{ts}|e{i}", "g", pid, ts, rng.random() < 0.3, 0.3, 0, features, ts)
        )
    return out


def test_sample_is_the_bottom_k_profiles_with_their_newest_vector_whatever_the_order() -> None:
    examples = _examples(3000, 400, seed=1)
    newest: dict[str, Example] = {}
    for ex in examples:
        old = newest.get(ex.profile_id)
        if old is None or (ex.prediction_ts, ex.features) > (old.prediction_ts, old.features):
            newest[ex.profile_id] = ex
    want = sorted(newest, key=profile_hash)[:50]
    samples = []
    for seed in range(3):
        shuffled = list(examples)
        random.Random(seed).shuffle(shuffled)
        sample = ProfileSample(capacity=50)
        for ex in shuffled:
            sample.add(ex.profile_id, ex.prediction_ts, ex.features)
        samples.append(sample.fields())
        assert sorted(sample.entries) == sorted(want)
        assert all(
            sample.entries[p][1:] == (newest[p].prediction_ts, newest[p].features) for p in want
        )
    assert samples[0] == samples[1] == samples[2]


def test_restored_sample_continues_identically_and_stores_only_its_changes() -> None:
    examples = _examples(2000, 300, seed=2)
    one = ProfileSample(capacity=40)
    stored: dict[str, bytes] = {}
    two = None
    for i, ex in enumerate(examples):
        if i == 1000:  # a restart: resume from what was stored
            two = ProfileSample.from_fields({k.encode(): v for k, v in stored.items()}, 40)
        for sample in (one, two) if two is not None else (one,):
            sample.add(ex.profile_id, ex.prediction_ts, ex.features)
        active = two if two is not None else one
        reset, write, delete = active.changes()
        assert not reset
        assert len(write) + len(delete) <= 2  # one added, at most one evicted
        stored.update(write)
        for pid in delete:
            del stored[pid]
    assert two is not None
    assert two.fields() == one.fields() == stored
    assert ProfileSample.from_fields(stored, 10).entries == {
        p: e for p, e in one.entries.items() if p in sorted(one.entries, key=profile_hash)[:10]
    }


def _model(quantiles: list[float]) -> LinearModel:
    return LinearModel(
        "g", 1, ["a"], [0.0], [1.0], [1.0], 0.0, warming_up=False, quantiles=quantiles
    )


def test_percentile_ranks_among_the_cut_points_with_mid_ranks_for_ties() -> None:
    values = [i / 1000 for i in range(1000)]
    m = _model(cut_points(values))
    assert len(m.quantiles) == 201 and m.quantiles == sorted(m.quantiles)
    for p in (0.0005, 0.1, 0.25, 0.5, 0.7505, 0.99):
        assert m.percentile(p) == pytest.approx(100 * p, abs=0.2)
    assert m.percentile(-1.0) == 0.0 and m.percentile(2.0) == 100.0
    # 60 % of the profiles share one probability: they all get its mid-rank
    tied = _model(cut_points([0.1] * 600 + [0.2 + i / 1000 for i in range(400)]))
    assert tied.percentile(0.1) == pytest.approx(30.0, abs=0.3)
    assert tied.percentile(0.05) == 0.0
    assert _model([]).percentile(0.3) == 50.0  # no sample (warming up): the middle
    # the cut points travel with the model
    assert LinearModel.from_json(m.to_json()).quantiles == m.quantiles
    assert list(orjson.loads(m.to_json()))[-3:] == ["quantiles", "status", "clip_sd"]


def test_published_versions_carry_cut_points_over_the_sample(result: BacktestResult) -> None:
    live = [m for m in result.models if not m.warming_up]
    assert live and all(len(m.quantiles) == 201 for m in live)
    assert all(m.quantiles == [] for m in result.models if m.warming_up)
    trainer = result.trainer
    for sample in trainer.samples.values():
        assert 0 < len(sample) <= trainer.sample_profiles
    # a restarted trainer (trainer states + sample fields) publishes the same cut points
    again = Trainer(CFG, trainer.feature_names)
    for goal in trainer.learners:
        assert again.restore(goal, trainer.state(goal), trainer.samples[goal].fields())
    for goal in trainer.learners:
        a, b = trainer.snapshot(goal), again.snapshot(goal)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.version == b.version and a.quantiles == b.quantiles


def test_two_engines_from_the_same_models_rank_alike_with_no_memory(
    result: BacktestResult,
) -> None:
    models = {m.goal: m for m in result.models}  # the newest of each goal
    one, two = Engine(CFG, dict(models)), Engine(CFG, dict(models))
    model = one.models["conversion"]
    probabilities = [i / 97 for i in range(98)]
    first = [model.percentile(p) for p in probabilities]
    assert [model.percentile(p) for p in reversed(probabilities)] == first[::-1]
    assert [two.models["conversion"].percentile(p) for p in probabilities] == first
    events = [
        Event(
            f"e-{i}",
            f"p-{i % 7}",
            "commerce.purchases",
            86_400_000 * i,
            {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 20.0 + i}}},
        )
        for i in range(30)
    ]
    scores: list[list[Any]] = []
    for engine, order in ((one, events), (two, events[::-1])):
        out = Outcome()
        for ev in order:  # each event on a profile of its own: its score depends on it alone
            engine.process(
                None, Event(ev.event_id, ev.event_id, ev.event_type, ev.timestamp_ms, ev.body), out
            )
        scores.append(
            sorted(
                (s.profile_id, s.goal, s.probability, s.percentile, s.bucket) for s in out.scores
            )
        )
    assert scores[0] == scores[1]


def _shares(buckets: list[str | None]) -> dict[str, float]:
    counts = Counter(buckets)
    return {name: 100 * counts[name] / len(buckets) for name in CFG.buckets.names}


def _sample_shares(result: BacktestResult, goal: str, model: LinearModel) -> dict[str, float]:
    """Bucket shares of ``goal``'s sampled profiles as they are at the end of ``result``,
    ranked by ``model`` (as the trainer ranks them for the cut points)."""
    vectors = result.trainer.current_vectors(goal, result.states).values()
    return _shares(
        [CFG.buckets.bucket(model.percentile(model.probability_t(transform(v)))) for v in vectors]
    )


def test_buckets_of_the_sampled_profiles_match_the_thresholds(result: BacktestResult) -> None:
    """What the cut points promise: ranked by the newest published version, the sampled
    profiles as they are at the end fall in the buckets as the thresholds say (the
    version was published on them as they were then: a little drift)."""
    trainer = result.trainer
    for goal in trainer.samples:
        model = result.engine.models[goal]  # the newest promoted version
        if model.warming_up:
            continue
        shares = _sample_shares(result, goal, model)
        assert shares["high"] == pytest.approx(25, abs=4), (goal, shares)
        assert shares["low"] == pytest.approx(25, abs=4), (goal, shares)


def test_segment_sizes_of_the_final_states_match_the_thresholds(result: BacktestResult) -> None:
    """``customer-ai segment``'s view: the stored bucket of every profile last scored by a
    live model; with the default thresholds [25, 75] about a quarter is "high"."""
    live = {(m.goal, m.version) for m in result.models if not m.warming_up}
    for goal in result.trainer.learners:
        buckets = [
            st.goals[goal].bucket
            for st in result.states.values()
            if (goal, st.goals[goal].model_version) in live and st.goals[goal].bucket
        ]
        assert len(buckets) > 50, goal
        shares = _shares(buckets)
        assert shares["high"] == pytest.approx(25, abs=8), (goal, shares)
        assert shares["low"] == pytest.approx(25, abs=8), (goal, shares)


@pytest.mark.parametrize("covered", [0.0, 0.5, 1.0])
def test_the_current_matrix_is_the_aged_one_with_the_fresh_rows_put_in(covered: float) -> None:
    """What a publication ranks: every sampled profile's fresh vector where there is one,
    else its newest learnt vector aged; when all are fresh none is aged, same values."""
    rng = random.Random(7)
    sample = ProfileSample(capacity=300)
    day = 86_400_000
    for i in range(500):
        sample.add(f"p{i}", rng.randrange(200) * day, [rng.random() * 5 for _ in range(4)])
    aging = ([7.0, 30.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0])
    now = 210 * day
    ids = sorted(sample.entries)
    fresh = {pid: [rng.random() * 5 for _ in range(4)] for pid in ids if rng.random() < covered}
    # as Trainer.snapshot built it: every row aged, then the fresh ones put in
    want = sample.matrix_at(now, aging)
    for row, pid in enumerate(ids):
        if pid in fresh:
            want[row] = fresh[pid]
    got = sample.current_matrix(now, aging, fresh)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def when_known() -> BacktestResult:
    """The same history with every goal's examples released as soon as their label is
    known (``release = "when_known"``, the default): a positive matures at its goal event,
    well before its window closes."""
    text = CONFIG.read_text().replace('release = "at_window_close"', 'release = "when_known"')
    assert 'release = "at_window_close"' not in text
    return run_backtest(generate_events(profiles=1500, days=300, seed=7), parse_config(text))


def test_the_sample_is_ranked_at_the_newest_maturation_not_a_window_ahead(
    when_known: BacktestResult,
) -> None:
    """The cut points rank the sampled profiles as of the newest maturation the trainer
    learnt (event time "now" for it), never a window after the newest prediction, which
    aged them a whole window into the future with early releases and skewed the buckets
    (conversion 22/48/30, churn 38/40/22 before)."""
    trainer = when_known.trainer
    newest_event = max(st.ref_ts for st in when_known.states.values())
    for goal in trainer.samples:
        matured = max(e.matured_ts for e in when_known.examples if e.goal == goal)
        assert trainer.sample_clock(goal) == matured <= newest_event
        model = when_known.engine.models[goal]
        assert not model.warming_up, goal
        shares = _sample_shares(when_known, goal, model)
        assert shares["high"] == pytest.approx(25, abs=4), (goal, shares)
        assert shares["low"] == pytest.approx(25, abs=4), (goal, shares)


def test_vectors_at_are_vector_at_of_every_state_bit_for_bit(result: BacktestResult) -> None:
    """The matrix a publication ranks in one go holds the very doubles ``vector_at`` gives,
    as of times before, at and after each state's newest event."""
    fz = result.engine.featurizer
    states = list(result.states.values())
    newest = max(s.ref_ts for s in states)
    for at in (0, min(s.ref_ts for s in states), newest - 45 * 86_400_000, newest, newest + 1):
        want = np.array([fz.vector_at(s, at) for s in states], dtype=float)
        assert vectors_at(fz, states, at).tobytes() == want.tobytes(), at
    assert vectors_at(fz, [], newest).shape == (0, len(fz.names))


@pytest.mark.parametrize("kept", [0.0, 0.5, 1.0])
def test_the_trainers_current_matrix_is_what_its_current_vectors_give(
    result: BacktestResult, kept: float
) -> None:
    """``Trainer.current_matrix`` (the backtest's) ranks what ``current_vectors`` (the
    stream's) gives through ``ProfileSample.current_matrix``: fresh rows where a state is
    there, aged learnt vectors where not."""
    trainer = result.trainer
    rng = random.Random(3)
    states = {pid: s for pid, s in result.states.items() if rng.random() < kept}
    for goal in trainer.samples:
        sample = trainer.samples[goal]
        assert len(sample)
        fresh = trainer.current_vectors(goal, states)
        want = sample.current_matrix(trainer.sample_clock(goal), trainer._aging, fresh)
        got = trainer.current_matrix(goal, states)
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), goal


def test_the_current_matrix_reads_again_the_states_that_changed(result: BacktestResult) -> None:
    """Between publications the trainer keeps the sampled states it read: one that events
    changed since (in place, or replaced) is read again, an unchanged one is not needed."""
    trainer = result.trainer
    fz = result.engine.featurizer
    goals = list(trainer.samples)
    states = {pid: ProfileState.from_bytes(s.to_bytes(), goals) for pid, s in result.states.items()}
    for goal, sample in trainer.samples.items():
        trainer.current_matrix(goal, states)
        ids = sorted(sample.entries)
        fz.apply(states[ids[0]], states[ids[0]].ref_ts + 86_400_000, [0, 3], [0.0, 7.0])
        replaced = ProfileState.from_bytes(states[ids[1]].to_bytes(), goals)
        fz.apply(replaced, replaced.ref_ts, [1], [0.0])
        states[ids[1]] = replaced
        del states[ids[2]]
        fresh = trainer.current_vectors(goal, states)
        want = sample.current_matrix(trainer.sample_clock(goal), trainer._aging, fresh)
        got = trainer.current_matrix(goal, states)
        assert got.tobytes() == want.tobytes(), goal


def test_the_newest_prediction_time_follows_updates_and_evictions() -> None:
    """``newest()`` follows entries as they come, change and leave: always their latest time."""
    rng = random.Random(11)
    sample = ProfileSample(capacity=50)
    for _ in range(3000):
        sample.add(f"p{rng.randrange(400)}", rng.randrange(10_000), [rng.random()])
        if rng.random() < 0.1:
            assert sample.newest() == max(ts for _, ts, _ in sample.entries.values())
