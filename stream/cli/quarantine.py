"""``customer-ai quarantine [show ID | release ID --reset|--restore]``: poison profile records.

A profile record the worker cannot read is moved aside to ``P:quarantine:{<id>}`` and
noted in ``P:quarantined`` (:mod:`stream.worker.quarantine`); its events go to the DLQ as
``corrupt_state`` while it is there. This command lists those profiles, shows a record's
raw bytes, and releases one: ``--reset`` drops the record (the profile starts fresh at its
next event), ``--restore`` puts it back once it can be read (fixed by hand, or a version
that reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

import orjson

from stream.cli.common import (
    CliError,
    connect_store,
    load_cli_config,
    output_console,
    settings_from_env,
)

if TYPE_CHECKING:
    from models.config import Config
    from stream.worker.store import RedisStore

__all__ = ["SHOWN_BYTES", "cmd_quarantine", "is_quarantined", "readable"]

#: bytes of a raw value ``show`` prints (its repr), the rest counted
SHOWN_BYTES = 200


def readable(raw_type: str, fields: dict[bytes, bytes], config: Config) -> str:
    """Why this version cannot read a quarantined record; ``""`` when it can.

    Parameters
    ----------
    raw_type : str
        The key's Redis type.
    fields : dict
        A hash's fields (``s`` is decoded as the worker decodes it).
    config : Config
        The configuration (its goals).
    """
    from models.state import ProfileState

    if raw_type != "hash":
        return f"the key is a {raw_type}, not a hash"
    raw = fields.get(b"s")
    if raw is None:
        return ""
    try:
        ProfileState.from_bytes(raw, [g.name for g in config.goals])
    except Exception as exc:  # noqa: BLE001 - any failure is the record's, as in the worker
        return f"its state does not decode ({type(exc).__name__}: {str(exc)[:200]})"
    return ""


def _shown(raw: bytes) -> str:
    """``repr`` of at most :data:`SHOWN_BYTES` bytes, with what was cut."""
    text = repr(raw[:SHOWN_BYTES])
    return text + (f" ... ({len(raw):,} bytes)" if len(raw) > SHOWN_BYTES else "")


async def _raw(store: RedisStore, key: str) -> tuple[str, Any]:
    """The key's type and value (a hash's fields, a string's bytes, else its size)."""
    redis = store.redis
    kind = (await redis.type(key)).decode()
    if kind == "hash":
        return kind, await redis.hgetall(key)
    if kind == "string":
        return kind, await redis.get(key)
    if kind == "none":
        return kind, None
    size = {"list": redis.llen, "set": redis.scard, "zset": redis.zcard, "stream": redis.xlen}
    counter = size.get(kind)
    return kind, (await counter(key) if counter else None)


def _note(raw: bytes | None) -> dict[str, Any] | None:
    """A quarantine note (``P:quarantined``) as a dict; ``None`` when there is none."""
    if raw is None:
        return None
    try:
        note = orjson.loads(raw)
    except ValueError:
        note = None
    return note if isinstance(note, dict) else {"reason": "?", "detail": _shown(raw)}


def _not_quarantined(profile_id: str) -> CliError:
    return CliError(
        f"profile {profile_id!r} is not quarantined (`customer-ai quarantine` lists those "
        "that are)",
        1,
    )


async def is_quarantined(profile_id: str) -> bool:
    """Whether the profile's record is quarantined (its quarantine key or note exists)."""
    store = await connect_store(settings_from_env())
    try:
        aside = await store.redis.exists(store.quarantine_key(profile_id))
        return bool(aside or await store.redis.hexists(store.quarantined_key(), profile_id))
    finally:
        await store.close()


async def _list(as_json: bool) -> int:
    from stream.worker.quarantine import read_records

    store = await connect_store(settings_from_env())
    try:
        records = await read_records(store)
    finally:
        await store.close()
    if as_json:
        for pid, record in records.items():
            sys.stdout.write(orjson.dumps({"profile_id": pid, **record}).decode() + "\n")
        return 0
    out = output_console()
    if not records:
        out.print("no quarantined profiles", highlight=False)
        return 0
    from rich.table import Table

    table = Table("profile", "reason", "quarantined at", "source", "detail")
    for pid, r in records.items():
        source = f"{r.get('topic', '?')}[{r.get('partition', '?')}]"
        table.add_row(
            pid, str(r.get("reason")), str(r.get("at", "?")), source, str(r.get("detail"))[:80]
        )
    out.print(table)
    n = len(records)
    out.print(f"{n:,} quarantined profile{'' if n == 1 else 's'}", highlight=False)
    return 0


async def _show(profile_id: str, config: Config) -> int:
    store = await connect_store(settings_from_env())
    try:
        key = store.quarantine_key(profile_id)
        note = _note(await store.redis.hget(store.quarantined_key(), profile_id))
        kind, value = await _raw(store, key)
    finally:
        await store.close()
    if note is None and kind == "none":
        raise _not_quarantined(profile_id)
    out = output_console()
    lines = [f"profile {profile_id}"]
    if note is not None:
        lines += [f"  {name}: {value_}" for name, value_ in note.items()]
    lines.append(f"record {key} ({kind})")
    if kind == "hash":
        lines += [f"  {f.decode('utf-8', 'replace')}: {_shown(v)}" for f, v in value.items()]
        why = readable(kind, value, config)
    elif kind == "string":
        lines.append(f"  {_shown(value)}")
        why = readable(kind, {}, config)
    elif kind == "none":
        lines.append("  (no record: nothing to restore; --reset removes the note)")
        why = "there is no record"
    else:
        lines.append(f"  {value if value is not None else '?'} elements")
        why = readable(kind, {}, config)
    lines.append(
        "readable by this version: " + ("yes (--restore puts it back)" if not why else f"no: {why}")
    )
    out.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
    return 0


async def _release(profile_id: str, restore: bool, config: Config) -> int:
    from models.engine import Engine
    from models.features import Featurizer
    from models.state import ProfileState

    store = await connect_store(settings_from_env())
    redis = store.redis
    try:
        aside = store.quarantine_key(profile_id)
        profile = store.profile_key(profile_id)
        note = _note(await redis.hget(store.quarantined_key(), profile_id))
        kind, value = await _raw(store, aside)
        if note is None and kind == "none":
            raise _not_quarantined(profile_id)
        if not restore:
            goals = [g.name for g in config.goals]
            buckets = list(config.buckets.names)
            names = Featurizer(config).names
            async with redis.pipeline(transaction=not store.cluster) as pipe:
                pipe.delete(aside)
                pipe.hdel(store.quarantined_key(), profile_id)
                # its segment memberships, whatever the record held
                for goal in goals:
                    for bucket in buckets:
                        pipe.srem(store.segment_key(goal, bucket), profile_id)
                        for name in names:
                            pipe.srem(store.segment_factor_key(goal, bucket, name), profile_id)
                await pipe.execute()
            output_console().print(
                f"profile {profile_id}: quarantined record dropped; the profile starts fresh "
                "at its next event",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            return 0
        if kind == "none":
            await redis.hdel(store.quarantined_key(), profile_id)
            raise CliError(
                f"profile {profile_id!r} has no quarantined record to restore (its note is "
                "removed); its next event starts it fresh",
                1,
            )
        why = readable(kind, value, config)
        if why:
            raise CliError(
                f"the quarantined record of {profile_id!r} still cannot be read: {why}; "
                f"fix it in Redis (key {aside}) or drop it with "
                f"`customer-ai quarantine release {profile_id} --reset`",
                1,
            )
        if not await redis.renamenx(aside, profile):
            raise CliError(
                f"profile {profile_id!r} has a new record ({profile}) since it was "
                f"quarantined; drop the quarantined one with "
                f"`customer-ai quarantine release {profile_id} --reset`",
                1,
            )
        due = None
        raw_state = value.get(b"s")
        if raw_state is not None and note is not None and "topic" in note:
            state = ProfileState.from_bytes(raw_state, [g.name for g in config.goals])
            due = Engine(config).next_due(state)
        async with redis.pipeline(transaction=False) as pipe:
            if due is not None and note is not None:  # its pending labels mature again
                pipe.zadd(store.due_key(note["topic"], int(note["partition"])), {profile_id: due})
            pipe.hdel(store.quarantined_key(), profile_id)
            await pipe.execute()
    finally:
        await store.close()
    output_console().print(
        f"profile {profile_id}: record restored to {profile}; its next events apply to it "
        "(events dead-lettered as corrupt_state meanwhile can be produced again)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """``customer-ai quarantine [--json]``, ``... show ID``, ``... release ID --reset|--restore``."""
    action = getattr(args, "action", None)
    if action is None:
        return asyncio.run(_list(args.json))
    config = load_cli_config(args.config)
    if action == "show":
        return asyncio.run(_show(args.profile_id, config))
    return asyncio.run(_release(args.profile_id, args.restore, config))
