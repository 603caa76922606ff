"""The Lua scripts of the profile store, and how a batch of their calls is sent.

Each script is a short loop over one chunk of a batch (at most :data:`SCRIPT_CHUNK`
writes and :data:`SCRIPT_CHUNK_MOVES` segment-set moves), so one call never blocks
Redis for long. Calls go by ``EVALSHA`` inside the batch's pipeline (no ``SCRIPT
EXISTS`` round trip); a call answered ``NOSCRIPT`` (Redis restarted or its script cache
was flushed) did not run and is sent again with ``EVAL``, which also caches it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

__all__ = [
    "CAS_BATCH",
    "CAS_BATCH_SCRIPT",
    "CAS_SCRIPT",
    "DUE_BATCH",
    "DUE_BATCH_SCRIPT",
    "FORWARD_OFFSETS",
    "FORWARD_OFFSETS_SCRIPT",
    "LOAD_BATCH",
    "MERGE",
    "MERGE_SCRIPT",
    "LOAD_BATCH_SCRIPT",
    "QUARANTINE",
    "QUARANTINE_SCRIPT",
    "SCRIPT_CHUNK",
    "SCRIPT_CHUNK_MOVES",
    "Script",
    "ScriptCall",
    "run_scripts",
]

log = logging.getLogger(__name__)

#: KEYS[1] profile key, KEYS[2 .. 1+n] segment sets to leave, KEYS[2+n ..] segment sets
#: to join; ARGV: expected version ('' = absent), offset field ('' = none), offset, state,
#: scores JSON, top factors (``tf``, '' = none), profile id (the set member), n.
#: Returns 1 if written, 0 if the version moved (fenced: nothing is changed). Sent (as
#: ``EVAL``) per write in cluster mode only; otherwise :data:`CAS_BATCH_SCRIPT` runs it
#: for a chunk of writes.
CAS_SCRIPT = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
local nv = (tonumber(v) or 0) + 1
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5], ARGV[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'v', nv, 's', ARGV[4], 'scores', ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'tf', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'tf')
end
local n = tonumber(ARGV[8]) or 0
for i = 2, 1 + n do redis.call('SREM', KEYS[i], ARGV[7]) end
for i = 2 + n, #KEYS do redis.call('SADD', KEYS[i], ARGV[7]) end
return 1
"""

#: Writes (or due entries, or profiles loaded) per call of a batch script at most.
SCRIPT_CHUNK = 200

#: Segment set moves (SADD / SREM) per call of :data:`CAS_BATCH_SCRIPT` at most (a chunk
#: ends before the write that would pass it, but holds at least one write). A chunk is a
#: short loop, so one call never blocks Redis for long, even when every write moves all
#: its sets (``bench/store_speed.py``).
SCRIPT_CHUNK_MOVES = 2000

#: :data:`CAS_SCRIPT` for a chunk of ``n`` writes, each checked and applied on its own.
#: KEYS[1 .. n] the profile key of each write, then every segment set the chunk leaves or
#: joins, once. ARGV, 9 per write: expected version ('' = absent), offset field ('' =
#: none), offset, state, scores JSON, top factors ('' = none), profile id (the set
#: member), the sets to leave and the sets to join (their positions in KEYS, comma
#: separated: ``"7,12"``, '' = none). Returns one integer per write: 1 written, 0 fenced
#: (the version moved: nothing of that write is changed).
CAS_BATCH_SCRIPT = """
local out = {}
for i = 1, #ARGV / 9 do
  local a = 9 * i - 8
  local key, pid = KEYS[i], ARGV[a + 6]
  local v = redis.call('HGET', key, 'v')
  if (v or '') == ARGV[a] then
    local nv = (tonumber(v) or 0) + 1
    if ARGV[a + 1] ~= '' then
      redis.call('HSET', key, 'v', nv, 's', ARGV[a + 3], 'scores', ARGV[a + 4],
        ARGV[a + 1], ARGV[a + 2])
    else
      redis.call('HSET', key, 'v', nv, 's', ARGV[a + 3], 'scores', ARGV[a + 4])
    end
    if ARGV[a + 5] ~= '' then
      redis.call('HSET', key, 'tf', ARGV[a + 5])
    else
      redis.call('HDEL', key, 'tf')
    end
    for j in string.gmatch(ARGV[a + 7], '%d+') do redis.call('SREM', KEYS[tonumber(j)], pid) end
    for j in string.gmatch(ARGV[a + 8], '%d+') do redis.call('SADD', KEYS[tonumber(j)], pid) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

#: KEYS[1] due index, KEYS[1 + i] profile key of entry i; ARGV, 3 per entry: version the
#: entry was computed from, profile id, close time ('' = remove). Moves each entry only
#: while its profile is at that version: a batch that lost the partition (a zombie) and
#: computed its entry from a state another worker has moved on can neither drop nor
#: delay the newer state's entry. Returns the number of entries moved.
DUE_BATCH_SCRIPT = """
local moved = 0
for i = 2, #KEYS do
  local a = 3 * i - 5
  if (redis.call('HGET', KEYS[i], 'v') or '') == ARGV[a] then
    if ARGV[a + 2] == '' then
      redis.call('ZREM', KEYS[1], ARGV[a + 1])
    else
      redis.call('ZADD', KEYS[1], ARGV[a + 2], ARGV[a + 1])
    end
    moved = moved + 1
  end
end
return moved
"""

#: KEYS[1 .. n]: profile keys, KEYS[n + 1 .. 2n] their quarantine keys; ARGV[1] the
#: offset field. Returns, per profile, the ``HMGET`` of its ``s``, ``v``, offset field and
#: ``tf``; the error text instead when the key cannot be read as a hash (``WRONGTYPE``: a
#: poison record costs only itself, not the chunk); ``0`` when the profile has no key
#: and is quarantined. Read only: a chunk is read at one instant.
LOAD_BATCH_SCRIPT = """
local out, n = {}, #KEYS / 2
for i = 1, n do
  local r = redis.pcall('HMGET', KEYS[i], 's', 'v', ARGV[1], 'tf')
  if r.err then
    out[i] = r.err
  elseif not r[1] and not r[2] and redis.call('EXISTS', KEYS[n + i]) == 1 then
    out[i] = 0
  else
    out[i] = r
  end
end
return out
"""

#: KEYS[1] profile key, KEYS[2] its quarantine key (same hash slot), then optionally
#: KEYS[3] the quarantine records (hash) and KEYS[4] the due index (not in cluster mode,
#: where they live in other slots). ARGV: the profile id, the record (JSON), and the
#: version the profile was loaded at (``*``: its key was not a hash). Moves the key aside
#: only if it is still the record that was found unreadable (a hash at that version, or
#: still not a hash), records it and drops its due entry, atomically. Returns 1 if moved.
QUARANTINE_SCRIPT = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 0 end
if t == 'hash' then
  if ARGV[3] == '*' or (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[3] then return 0 end
elseif ARGV[3] ~= '*' then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
if #KEYS > 2 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return 1
"""

#: Identity stitching (:mod:`stream.worker.stitching`): one person absorbs another.
#: KEYS[1] the winner's profile key, KEYS[2] the absorbed profile's, KEYS[3] the erasures
#: in progress (``P:erasing``), KEYS[4 .. 3+m] the keys of the absorbed profile's
#: aliases, then the segment sets the absorbed profile leaves (n of them), then those the
#: winner joins. ARGV: the winner's expected version ('' = absent), the absorbed one's,
#: the winner's state, scores JSON, top factors ('' = none), the alias record
#: (``{"merged_into": ...}``), the winner's id, the absorbed id, m, n. Returns -1 (nothing
#: changed) while either id is being erased, 0 (nothing changed) unless both versions are
#: the ones read; else writes the winner's state (its version + 1), makes the absorbed
#: key and its aliases' keys alias records (``s`` the alias record, ``scores`` and ``tf``
#: removed, their applied offsets kept, each version + 1), moves the segment sets, and
#: returns 1.
MERGE_SCRIPT = """
if redis.call('HEXISTS', KEYS[3], ARGV[7]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[8]) == 1 then
  return -1
end
if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[2], 'v') or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'v', (tonumber(ARGV[1]) or 0) + 1, 's', ARGV[3], 'scores', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'tf', ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'tf')
end
local m, n = tonumber(ARGV[9]), tonumber(ARGV[10])
for i = 2, 3 + m do
  if i ~= 3 then
    local v = tonumber(redis.call('HGET', KEYS[i], 'v')) or 0
    redis.call('HDEL', KEYS[i], 'scores', 'tf')
    redis.call('HSET', KEYS[i], 'v', v + 1, 's', ARGV[6])
  end
end
for i = 4 + m, 3 + m + n do redis.call('SREM', KEYS[i], ARGV[8]) end
for i = 4 + m + n, #KEYS do redis.call('SADD', KEYS[i], ARGV[7]) end
return 1
"""

#: KEYS: profile keys; ARGV[1] the applied offset field, then one offset per key. Raises
#: each key's field to its offset (a profile's events forwarded to their person's
#: canonical id, identity stitching: applied elsewhere), never lowers it (a zombie's
#: older offset). Returns the number raised.
FORWARD_OFFSETS_SCRIPT = """
local n = 0
for i = 1, #KEYS do
  local o = tonumber(redis.call('HGET', KEYS[i], ARGV[1])) or -1
  if tonumber(ARGV[i + 1]) > o then
    redis.call('HSET', KEYS[i], ARGV[1], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (the name ``EVALSHA`` calls it by)."""

    body: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


CAS_BATCH = Script(CAS_BATCH_SCRIPT)
DUE_BATCH = Script(DUE_BATCH_SCRIPT)
LOAD_BATCH = Script(LOAD_BATCH_SCRIPT)
QUARANTINE = Script(QUARANTINE_SCRIPT)
MERGE = Script(MERGE_SCRIPT)
FORWARD_OFFSETS = Script(FORWARD_OFFSETS_SCRIPT)

#: A script call queued in a pipeline: (script, KEYS, ARGV).
ScriptCall = tuple[Script, list[Any], list[Any]]


async def run_scripts(
    redis: Any, calls: list[ScriptCall], queue: Callable[[Any], None] | None = None
) -> list[Any]:
    """Run script calls by ``EVALSHA`` in one pipeline, re-sending ``NOSCRIPT`` ones.

    Parameters
    ----------
    calls
        ``(script, KEYS, ARGV)`` per call, run in this order.
    queue
        Optional ``queue(pipe)`` adding plain commands after the calls (same
        pipeline; their replies are dropped, their errors raised).

    Returns
    -------
    list
        The reply of each call.

    A call answered ``NOSCRIPT`` (the script cache was emptied: Redis restarted, or
    ``SCRIPT FLUSH``) did not run; it is sent again with ``EVAL`` (the body), which
    caches the script for the next ``EVALSHA``. This replaces redis-py's
    ``SCRIPT EXISTS`` round trip before each pipeline that holds a registered script.
    The first other error is raised once every reply is read.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if queue is not None:
            queue(pipe)
        replies = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(replies[: len(calls)]) if isinstance(r, NoScriptError)]
    if missing:
        log.info("Redis lost %d cached script calls (NOSCRIPT); sending the bodies", len(missing))
        async with redis.pipeline(transaction=False) as pipe:
            for i in missing:
                script, keys, args = calls[i]
                pipe.eval(script.body, len(keys), *keys, *args)
            again = await pipe.execute(raise_on_error=False)
        for i, r in zip(missing, again):
            replies[i] = r
    for r in replies:
        if isinstance(r, Exception):
            raise r
    return replies[: len(calls)]
