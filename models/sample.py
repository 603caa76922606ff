"""A deterministic sample of profiles, and the percentile cut points of a model over it.

A score's percentile is its rank among the current scores of the goal's *profiles*
(not score events), as a function of the model version and the probability alone. The
trainer keeps, per goal, a :class:`ProfileSample`: the ``capacity`` profiles whose id
has the smallest BLAKE2b hash (a bottom-k sketch: the same profiles whatever the order
the examples arrive in, and in every process: Python's ``hash`` of a string is salted),
each with the newest feature vector its learnt examples carried. When a model version is
published, :func:`cut_points` of its probabilities over the sample go with it
(``LinearModel.quantiles``) and :meth:`models.model.LinearModel.percentile` ranks any
probability among them.

Once the sample is full, a profile enters only with a hash below the largest kept one,
which then leaves; the largest kept hash only ever decreases, so a profile in the sample
was in it since its first example and holds the newest of all its examples' vectors.

Examples
--------
>>> sample = ProfileSample(capacity=2)
>>> for pid, ts in [("a", 1), ("b", 1), ("c", 1), ("a", 5), ("a", 3)]:
...     _ = sample.add(pid, ts, [float(ts)])
>>> sorted(sample.entries) == sorted(sorted("abc", key=profile_hash)[:2])
True
>>> sample.add("a", 4, [4.0]), sample.entries["a"][1:] if "a" in sample.entries else None
(False, (5, [5.0]))
>>> cut_points([0.1, 0.2, 0.3, 0.4, 0.5], 5)
[0.1, 0.2, 0.3, 0.4, 0.5]
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING

import numpy as np
import orjson

from models.config import DAY_MS
from models.features import MAX_DAYS
from models.model import P_MAX, P_MIN, clamp_probability
from models.state import NEVER

if TYPE_CHECKING:
    from models.features import Featurizer
    from models.model import LinearModel
    from models.state import ProfileState

__all__ = [
    "CUT_POINTS",
    "SAMPLE_PROFILES",
    "ProfileSample",
    "SampledStates",
    "cut_points",
    "probabilities",
    "profile_hash",
    "vectors_at",
]

#: profiles kept per goal (the sample's size once that many profiles have examples)
SAMPLE_PROFILES = 2000
#: cut points published with a model: quantiles at 0, 0.5, 1, ..., 100 %
CUT_POINTS = 201


def profile_hash(profile_id: str) -> int:
    """64 bits of BLAKE2b of the profile id: the same in every process and replay.

    >>> profile_hash("p-1")
    9103581961592979310
    """
    return int.from_bytes(blake2b(profile_id.encode(), digest_size=8).digest(), "big")


def cut_points(values: list[float], n: int = CUT_POINTS) -> list[float]:
    """``n`` quantiles of ``values`` at fractions ``0, 1/(n-1), ..., 1``, linearly
    interpolated between order statistics (numpy's default ``linear`` method), rounded to
    6 significant digits (a monotone rounding: the cut points stay sorted). Empty for no
    values.

    >>> cut_points([3.0, 1.0, 2.0], 5)
    [1.0, 1.5, 2.0, 2.5, 3.0]
    >>> cut_points([], 5)
    []
    """
    if not values:
        return []
    s = sorted(values)
    last = len(s) - 1
    out = []
    for i in range(n):
        pos = last * i / (n - 1)
        lo = int(pos)
        hi = min(lo + 1, last)
        v = s[lo] + (s[hi] - s[lo]) * (pos - lo)
        out.append(float(f"{v:.6g}"))
    return out


def probabilities(model: LinearModel, vectors: np.ndarray) -> np.ndarray:
    """``model``'s calibrated probability of every row of ``vectors`` (raw features, shape
    ``(n, d)``), at once: :meth:`~models.model.LinearModel.probability_t` of each
    :func:`~models.model.transform`-ed row (standardised inputs clipped, probabilities
    clamped to ``[P_MIN, P_MAX]`` alike), up to the last bits of the sums' order.

    >>> from models.model import LinearModel
    >>> m = LinearModel("g", 1, ["a"], [0.0], [1.0], [1.0], 0.0, warming_up=False)
    >>> [round(p, 4) for p in probabilities(m, np.array([[0.0], [np.e - 1]])).tolist()]
    [0.5, 0.7311]
    """
    n = vectors.shape[0]
    if model.warming_up:
        return np.full(n, clamp_probability(model.base_rate))
    mean = np.array(model.mean, dtype=float)
    std = np.array(model.std, dtype=float)
    scale = np.array(model.weights, dtype=float) / std
    offset = model.intercept - float((scale * mean).sum())
    k = model.clip_sd  # standardised inputs clipped to [-k, k], as the model scores
    transformed = np.clip(np.log1p(np.maximum(vectors, 0.0)), mean - k * std, mean + k * std)
    z = (transformed * scale).sum(axis=1) + offset
    y = model.calibration_a * z + model.calibration_b
    p = np.exp(-np.logaddexp(0.0, -y))  # sigmoid(y), with no overflow
    return np.clip(p, P_MIN, P_MAX)


def _raw(state: ProfileState) -> list[float]:
    """The parts of ``state`` a feature vector is computed from, as one row:
    decayed counts, decayed values, counts, last times, first time, gap, newest time."""
    return [
        *state.decayed,
        *state.values,
        *state.counts,
        *state.last_ts,
        state.first_ts,
        state.gap_ms,
        state.ref_ts,
    ]


def _vectors(
    featurizer: Featurizer, raw: np.ndarray, at: int, states: Sequence[ProfileState] = ()
) -> np.ndarray:
    """:meth:`~models.features.Featurizer.vector_at` as of ``at`` of the states whose
    :func:`_raw` rows ``raw`` holds (times are integers below 2**53: exact doubles); with
    ``[[attributes]]``, ``states`` (those states, in order) give the attribute features,
    read at the time each vector is of (never cached: a fragment changes no event count)."""
    n = raw.shape[0]
    taus = featurizer.taus_ms
    n_h, n_e = len(taus), featurizer.n_events
    n_dec, n_val = n_e * n_h, len(featurizer.valued) * n_h
    counts0 = n_dec + n_val
    ref, first, gap = raw[:, -1], raw[:, -3:-2], raw[:, -2:-1]
    later = at > ref  # the others read as of their newest event, undecayed
    # -(at - ref) / tau: the same correctly rounded quotient as the ints' in Python, and
    # math.exp of it (numpy's exp may differ in the last bit)
    exponents = (-(at - ref[later]))[:, None] / np.array(taus, dtype=float)
    factors = np.ones((n, n_h))
    factors[later] = np.array(list(map(math.exp, exponents.ravel().tolist()))).reshape(-1, n_h)
    now = np.maximum(ref, at)[:, None]
    last = raw[:, counts0 + n_e : counts0 + 2 * n_e]
    parts = [
        (raw[:, :n_dec].reshape(n, n_e, n_h) * factors[:, None, :]).reshape(n, n_dec),
        np.where(last == NEVER, MAX_DAYS, np.minimum(MAX_DAYS, (now - last) / DAY_MS)),
        raw[:, counts0 : counts0 + n_e],
        (raw[:, n_dec:counts0].reshape(n, -1, n_h) * factors[:, None, :]).reshape(n, n_val),
        (now - first) / DAY_MS,
        np.where(gap == NEVER, MAX_DAYS, np.minimum(MAX_DAYS, gap / DAY_MS)),
    ]
    vectors = np.concatenate(parts, axis=1)[:, featurizer.gather]
    reader = featurizer.attributes
    if reader is None:
        return vectors
    extra = [reader.features(s.attributes, max(s.ref_ts, at)) for s in states]
    return np.concatenate([vectors, np.array(extra, dtype=float).reshape(n, reader.width)], axis=1)


def vectors_at(featurizer: Featurizer, states: Sequence[ProfileState], at: int) -> np.ndarray:
    """:meth:`~models.features.Featurizer.vector_at` of every state as of time ``at``, at
    once: one row per state, in order, shape ``(len(states), d)``.

    The very values ``vector_at`` gives (the same operations on the same doubles: the
    decay factors come from :func:`math.exp`, the products, quotients and caps are
    IEEE-exact in numpy as in Python), without a list per profile. Every state must
    follow the featurizer's layout.

    >>> from models.config import parse_config
    >>> from models.features import Featurizer
    >>> fz = Featurizer(parse_config(open("customer-ai.toml").read()))
    >>> a, b = fz.new_state(0), fz.new_state(0)
    >>> fz.apply(a, 0, [3], [10.0])
    >>> fz.apply(b, 40 * DAY_MS, [0, 3], [0.0, 5.0])
    >>> rows = vectors_at(fz, [a, b], 30 * DAY_MS).tolist()
    >>> rows == [fz.vector_at(a, 30 * DAY_MS), fz.vector_at(b, 30 * DAY_MS)]
    True
    """
    if not states:
        return np.zeros((0, len(featurizer.names)))
    return _vectors(featurizer, np.array([_raw(s) for s in states], dtype=float), at, states)


class SampledStates:
    """The current states of one goal's sampled profiles, kept as a matrix of
    :func:`_raw` rows between publications: a row is read again from its state only when
    the state changed (another object, or events applied since: every applied event
    counts in ``n_events``). The trainer ranks the sample at every publication, while
    only the few sampled profiles with new events changed.
    """

    def __init__(self, featurizer: Featurizer) -> None:
        self.featurizer = featurizer
        self.ids: list[str] = []
        #: per row the state it was read from and its ``n_events`` then (None: not read)
        self.read: list[tuple[ProfileState, int] | None] = []
        self.raw = np.zeros((0, 0))

    def vectors(
        self, ids: list[str], states: dict[str, ProfileState], at: int
    ) -> tuple[list[int], np.ndarray]:
        """The positions in ``ids`` of the profiles with a state in ``states`` (of the
        featurizer's layout), and their :func:`vectors_at` ``at``, in that order.
        ``states`` is a dict (profile id -> state): a compiled lookup in it is quicker
        than a call of a mapping's ``get``."""
        fz = self.featurizer
        if ids != self.ids:
            old = {pid: row for row, pid in enumerate(self.ids)}
            take = [old.get(pid, -1) for pid in ids]
            read = [self.read[row] if row >= 0 else None for row in take]
            if len(self.ids) and ids:
                raw = self.raw[np.array(take, dtype=np.intp)]
            else:
                raw = np.zeros((len(ids), self.raw.shape[1]))
            self.ids, self.read, self.raw = list(ids), read, raw
        read = self.read
        rows: list[int] = []
        stale: list[int] = []
        changed: list[ProfileState] = []
        current: list[ProfileState] = []  # the states of ``rows`` (attribute features)
        for row, pid in enumerate(ids):
            state = states.get(pid)
            if state is None or state.layout != fz.fingerprint:
                continue
            rows.append(row)
            current.append(state)
            seen = read[row]
            if seen is None or seen[0] is not state or seen[1] != state.n_events:
                read[row] = (state, state.n_events)
                stale.append(row)
                changed.append(state)
        if stale:
            fresh = np.array([_raw(state) for state in changed], dtype=float)
            if self.raw.shape[1] != fresh.shape[1]:
                self.raw = np.zeros((len(ids), fresh.shape[1]))
            self.raw[stale] = fresh
        if not rows:
            return rows, np.zeros((0, len(fz.names)))
        raw = self.raw if len(rows) == len(ids) else self.raw[rows]
        return rows, _vectors(fz, raw, at, current)


class ProfileSample:
    """The bottom-``capacity`` profiles by :func:`profile_hash`, newest vector each.

    ``entries`` maps a profile id to ``(hash, prediction time, features)``. ``dirty``
    holds the ids added, updated or evicted since :meth:`changes` was last called.
    """

    def __init__(self, capacity: int = SAMPLE_PROFILES) -> None:
        self.capacity = capacity
        self.entries: dict[str, tuple[int, int, list[float]]] = {}
        self._heap: list[tuple[int, str]] = []  # (-hash, id): the largest hash on top
        self.dirty: set[str] = set()
        #: the stored copy must be replaced whole (a new lineage: other features)
        self.reset = False
        self._matrix: np.ndarray | None = None  # vectors() as an array, made on first use
        self._ids: list[str] = []  # the keys of ``entries``, kept sorted

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, profile_id: str, ts: int, features: list[float]) -> bool:
        """Record an example's vector; True if the sample changed.

        A profile's vector is replaced by one of a newer ``ts`` (ties: the larger vector,
        so the result does not depend on the order of arrival).
        """
        entry = self.entries.get(profile_id)
        if entry is not None:
            h, old_ts, old = entry
            if ts < old_ts or (ts == old_ts and features <= old):
                return False
            self.entries[profile_id] = (h, ts, list(features))
            self.dirty.add(profile_id)
            self._matrix = None
            return True
        h = profile_hash(profile_id)
        if len(self.entries) >= self.capacity:
            if not self._heap or h >= -self._heap[0][0]:
                return False
            _, evicted = heapq.heapreplace(self._heap, (-h, profile_id))
            del self.entries[evicted]
            del self._ids[bisect.bisect_left(self._ids, evicted)]
            self.dirty.add(evicted)
        else:
            heapq.heappush(self._heap, (-h, profile_id))
        self.entries[profile_id] = (h, ts, list(features))
        bisect.insort(self._ids, profile_id)
        self.dirty.add(profile_id)
        self._matrix = None
        return True

    def remove(self, profile_id: str) -> bool:
        """Drop ``profile_id`` (an erased person); True if it was sampled.

        Its place stays free until a profile with a small enough hash comes: a removed
        profile is not replaced by one evicted before.

        >>> s = ProfileSample()
        >>> _ = s.add("p", 7, [1.0]), s.add("q", 8, [2.0])
        >>> s.remove("p"), s.remove("p"), s.ids(), s.changes()[2]
        (True, False, ['q'], ['p'])
        """
        if profile_id not in self.entries:
            return False
        del self.entries[profile_id]
        del self._ids[bisect.bisect_left(self._ids, profile_id)]
        self._heap = [item for item in self._heap if item[1] != profile_id]
        heapq.heapify(self._heap)
        self.dirty.add(profile_id)
        self._matrix = None
        return True

    def ids(self) -> list[str]:
        """The sampled profile ids in order (the order of every matrix here; not a copy)."""
        return self._ids

    def matrix(self) -> np.ndarray:
        """:meth:`vectors` as an array of shape ``(len(self), d)`` (kept until a change)."""
        if self._matrix is None:
            self._matrix = np.array(self.vectors(), dtype=float)
        return self._matrix

    def newest(self) -> int:
        """The newest prediction time in the sample (0 when empty)."""
        return max((ts for _, ts, _ in self.entries.values()), default=0)

    def matrix_at(
        self, now: int, aging: tuple[list[float], list[float], list[float]]
    ) -> np.ndarray:
        """The sampled vectors as of event time ``now``: each aged from its prediction
        time by ``aging`` (:meth:`~models.features.Featurizer.aging`: decayed counts and
        sums decay, recencies and tenure grow), as the stream's scheduled rescorings see
        a profile that sent no event since. A vector newer than ``now`` is kept as is.

        >>> s = ProfileSample()
        >>> _ = s.add("p", 0, [2.0, 10.0, 3.0])
        >>> day = 86_400_000
        >>> s.matrix_at(30 * day, ([30.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0])).round(3).tolist()
        [[0.736, 40.0, 3.0]]
        """
        matrix = self.matrix()
        if not len(self.entries):
            return matrix
        horizon, recency, tenure = (np.array(a, dtype=float) for a in aging)
        times = np.array([self.entries[pid][1] for pid in self._ids], dtype=float)
        days = np.maximum(now - times, 0.0)[:, None] / 86_400_000.0
        decayed = np.where(horizon > 0, np.exp(-days / np.where(horizon > 0, horizon, 1.0)), 1.0)
        aged = matrix * decayed + days * (recency + tenure)
        return np.where(recency > 0, np.minimum(aged, 365.0), aged)

    def current_matrix(
        self,
        now: int,
        aging: tuple[list[float], list[float], list[float]],
        fresh: Mapping[str, list[float]],
    ) -> np.ndarray:
        """:meth:`matrix_at` with the row of every profile in ``fresh`` replaced by its
        vector there (its current state's features as of ``now``).

        When ``fresh`` has every sampled profile (a backtest's states, a profile store
        that has them all) no vector is aged: the matrix is ``fresh``'s rows, the very
        values the replaced rows would hold.

        >>> s = ProfileSample()
        >>> for pid in "ab":
        ...     _ = s.add(pid, 0, [2.0, 10.0])
        >>> aging, day = ([30.0, 0.0], [0.0, 1.0], [0.0, 0.0]), 86_400_000
        >>> s.current_matrix(30 * day, aging, {"b": [1.0, 2.0]}).round(3).tolist()
        [[0.736, 40.0], [1.0, 2.0]]
        >>> s.current_matrix(30 * day, aging, {"a": [5.0, 6.0], "b": [1.0, 2.0]}).tolist()
        [[5.0, 6.0], [1.0, 2.0]]
        """
        ids = self._ids
        if fresh and all(pid in fresh for pid in ids):
            return np.array([fresh[pid] for pid in ids], dtype=float)
        vectors = self.matrix_at(now, aging)
        for row, pid in enumerate(ids):
            vector = fresh.get(pid)
            if vector is not None:
                vectors[row] = vector
        return vectors

    def vectors(self) -> list[list[float]]:
        """The sampled feature vectors, in profile-id order."""
        return [self.entries[pid][2] for pid in self._ids]

    def field(self, profile_id: str) -> bytes:
        """The stored form of one entry: JSON ``[prediction time, features]``."""
        _, ts, features = self.entries[profile_id]
        return orjson.dumps([ts, features])

    def fields(self) -> dict[str, bytes]:
        """Every entry in its stored form (profile id -> :meth:`field`)."""
        return {pid: self.field(pid) for pid in self.entries}

    def changes(self) -> tuple[bool, dict[str, bytes], list[str]]:
        """``(reset, entries to write, ids to delete)`` since the last call; clears them."""
        write = {pid: self.field(pid) for pid in sorted(self.dirty) if pid in self.entries}
        delete = sorted(pid for pid in self.dirty if pid not in self.entries)
        reset, self.reset = self.reset, False
        self.dirty = set()
        return reset, write, delete

    @classmethod
    def from_fields(
        cls, fields: dict[str, bytes] | dict[bytes, bytes], capacity: int = SAMPLE_PROFILES
    ) -> ProfileSample:
        """The sample stored as :meth:`fields` (a Redis hash's keys may be bytes).

        Beyond ``capacity`` (a smaller capacity than when stored) the largest hashes are
        dropped and marked for deletion.

        >>> s = ProfileSample()
        >>> _ = s.add("p", 7, [1.0, 0.25])
        >>> ProfileSample.from_fields({b"p": s.field("p")}).entries == s.entries
        True
        """
        sample = cls(capacity)
        items = []
        for key, raw in fields.items():
            pid = key.decode() if isinstance(key, bytes) else key
            ts, features = orjson.loads(raw)
            items.append((profile_hash(pid), pid, int(ts), [float(x) for x in features]))
        items.sort()
        for h, pid, ts, features in items[:capacity]:
            sample.entries[pid] = (h, ts, features)
        sample._ids = sorted(sample.entries)
        sample.dirty = {pid for _, pid, _, _ in items[capacity:]}
        sample._heap = [(-h, pid) for pid, (h, _, _) in sample.entries.items()]
        heapq.heapify(sample._heap)
        return sample
