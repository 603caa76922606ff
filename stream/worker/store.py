"""The Redis store: the keys, the invariants of every write, and :class:`RedisStore`.

Per-profile state is loaded and stored once per batch (pipelined) by
:class:`~stream.worker.profile_store.ProfileStore`; models, learner states and the
trainer's offsets by :class:`~stream.worker.model_store.ModelStore`; the Lua scripts
live in :mod:`stream.worker.redis_scripts`. :class:`RedisStore` is both, on one
connection.

Layout (``P`` is the key prefix, ``cai`` by default; profile keys are hash-tagged
so each profile's key lives in one Redis Cluster slot):

=====================================  =========================================================
key                                    value
=====================================  =========================================================
``P:p:{<profile_id>}`` (hash)          ``s`` state (compact JSON), ``v`` write version,
                                       ``o:<topic>:<partition>`` offset of the last applied
                                       event from that partition, ``scores`` last scores per goal (readable JSON),
                                       ``tf`` indexed top factors per goal
                                       (``goal:3,17;goal2:5``: positions in the feature
                                       vector, absent when none)
``P:due:<topic>:<partition>`` (zset)   profiles with pending labels, scored by window close time
``P:wm:<topic>:<partition>``           the partition's event-time watermark (ms)
``P:seen:<topic>:<partition>`` (zset)  with ``[retention]`` only: profiles by the newest event
                                       time of their state (:mod:`stream.worker.retention`)
``P:model:<goal>``                     served model snapshot (JSON)
``P:learner:<goal>``                   full learner state (JSON), for the trainer to resume
``P:sample:<goal>`` (hash)             the trainer's sample of profiles (percentile basis):
                                       profile id -> JSON ``[prediction time, features]``
``P:trainer:offsets`` (hash)           training partition -> offset of the last learnt record
``P:learnt:<goal>`` (zset)             ids of the examples learnt (the newest
                                       ``LEARNT_IDS_KEPT``), scored by learning time (ms)
``P:models`` (hash)                    goal -> served model version
``P:quarantine:{<profile_id>}``        a profile record that could not be read, moved aside
                                       (:mod:`stream.worker.quarantine`)
``P:quarantined`` (hash)               profile id -> why and when it was quarantined (JSON)
``P:erasing`` (hash)                   profiles being erased -> the request (JSON), until the
                                       trainer passed its marker (:mod:`stream.worker.erasure`)
``P:erasures`` (hash)                  the erasure audit: request id -> what was removed (JSON,
                                       with the id's SHA-256, never the id)
``P:layouts`` (hash)                   feature layout fingerprint -> layout JSON of every
                                       configuration a worker started with; ``legacy`` ->
                                       the layout of format-1 states (no fingerprint)
``P:seg:<goal>:<bucket>`` (set)        profiles currently in that bucket
``P:segf:<goal>:<bucket>:<feature>``   profiles in that bucket whose last score's top factors
(set)                                  (the ``factors`` of the score message) include
                                       ``feature``
=====================================  =========================================================

Invariants
----------
- A profile's state changes only through a compare-and-set script: the write succeeds
  only if the stored write version ``v`` is the one the batch loaded. A worker that lost
  its partition (a zombie) and loaded an older version can never overwrite newer state.
  Without cluster mode the writes of a batch go through :data:`CAS_BATCH_SCRIPT`, one
  call per chunk of at most :data:`SCRIPT_CHUNK` writes and :data:`SCRIPT_CHUNK_MOVES`
  set moves, which checks and applies each write on its own (the same steps as
  :data:`CAS_SCRIPT`, the per-write script cluster mode sends): a fenced write changes
  nothing, the others of its chunk still apply, and the call returns one 0/1 per write.
  A chunk is a short loop, so one call never blocks Redis for long.
- An event is applied at most once: the batch skips events whose offset is at or below
  the profile's ``o:<topic>:<partition>``, written in the same atomic step as the state.
- Outputs (scores, segments, training examples) are produced and flushed *before* the
  state is written, so an event whose effect is stored always had its outputs sent.
- The segment index (``seg`` and ``segf`` sets) changes in the same script as the state
  (the segment keys are passed as ``KEYS``), so it never disagrees with the profile's
  stored bucket and ``tf``. Redis Cluster refuses a script whose keys live in different
  hash slots, and the profile key (slot of ``{<profile_id>}``) and the segment sets cannot
  share one; with ``cluster=True`` (``CUSTOMER_AI_REDIS_CLUSTER=1``) the store talks to the
  cluster with a cluster client and updates the index in a separate pipeline right after
  the state: a crash between the two can leave a profile in a stale set until its next
  change (``customer-ai segment`` checks each listed profile's stored bucket).
- A due entry given with the version it was computed from (``due_versions`` of
  :meth:`RedisStore.save`) moves only while the profile is still at that version
  (:data:`DUE_BATCH_SCRIPT`, one call per chunk, each entry checked on its own), so a
  zombie can neither drop nor delay the entry of newer state. Entries of fenced writes
  are not sent at all. Not in cluster mode (the profile and the index live in different
  slots): there the due entries are plain ZADD/ZREM.

- Redis being unavailable (connection loss, timeouts, ``LOADING``, ``READONLY``,
  ``BUSY``, ``OOM``, ``MASTERDOWN``) never fails a batch: every call is retried in place
  until Redis answers (:data:`~stream.worker.store_connection.REDIS_RETRIES`), so none of
  these reaches the partition's retry that dead-letters (``internal_error``). A pipeline
  raises its first error once every reply is read, so a failed call may have been
  partly applied; re-sending it whole is safe. Each script is atomic (Redis refuses it
  at its first write, before it changed anything, or runs it whole), and a ``MULTI``
  with a refused command is discarded whole. In :meth:`RedisStore.save` a CAS chunk that
  was applied before the failure is refused on the re-send (its version moved): those
  writes count as fenced, and :meth:`~stream.worker.scorer.BatchScorer._process_partition`
  re-does them from the stored state, whose applied offsets skip every event of the
  batch and whose snapshots are already matured at this watermark, so nothing is applied
  or sent twice. The due entries (guarded by version), ``ZADD``/``ZREM`` and the
  watermark ``SET`` are idempotent. Reads (:meth:`RedisStore.load`) change nothing.

Scripts are called by ``EVALSHA`` inside the batch's pipeline (no ``SCRIPT EXISTS``
round trip); a call answered ``NOSCRIPT`` (Redis restarted or its script cache was
flushed) did not run and is sent again with ``EVAL``, which also caches the script.
Without cluster mode, :meth:`RedisStore.load` reads a chunk of profiles with one call of
:data:`LOAD_BATCH_SCRIPT` (``HMGET`` of each key) instead of one command per profile.
"""

from __future__ import annotations

from stream.worker.model_store import LEARNT_IDS_KEPT, ModelStore
from stream.worker.profile_store import (
    LoadedProfile,
    ProfileStore,
    ProfileWrite,
    SegmentEntry,
    decode_top_factors,
    encode_top_factors,
)
from stream.worker.redis_scripts import (
    CAS_BATCH_SCRIPT,
    CAS_SCRIPT,
    DUE_BATCH_SCRIPT,
    LOAD_BATCH_SCRIPT,
    SCRIPT_CHUNK,
    SCRIPT_CHUNK_MOVES,
)

__all__ = [
    "CAS_BATCH_SCRIPT",
    "CAS_SCRIPT",
    "DUE_BATCH_SCRIPT",
    "LEARNT_IDS_KEPT",
    "LOAD_BATCH_SCRIPT",
    "SCRIPT_CHUNK",
    "SCRIPT_CHUNK_MOVES",
    "LoadedProfile",
    "ProfileWrite",
    "RedisStore",
    "SegmentEntry",
    "decode_top_factors",
    "encode_top_factors",
]


class RedisStore(ProfileStore, ModelStore):
    """Profile state, the due index, segments and models on one Redis connection.

    Every public coroutine retries while Redis is unavailable (connection loss, timeouts,
    ``LOADING``, ``READONLY``, ``BUSY``, ``OOM``, ``MASTERDOWN``) until it answers again
    (with capped backoff), so Redis trouble stalls the worker instead of losing,
    skipping or dead-lettering events.
    """
