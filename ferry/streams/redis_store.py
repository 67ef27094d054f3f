"""The Redis stream store: any replica can replay, follow or delete any replica's session.

Invariants (key layout and scripts in ``redis_scripts``):
- Every state change is one Lua script, so a reader never sees a half-applied append or trim.
- A writer learns it was replaced or deleted two ways: a message on the cancel channel (fast,
  sets ``cancelled`` within milliseconds on whichever replica runs it) and the append script
  refusing to write (sure, at the next append). After a reconnect of the listener, every local
  session is re-checked, so a message missed while disconnected is not lost.
- Followers block in XREAD on the session's data stream and stop at its end marker; a follower
  whose next entry does not start where it expected fell more than a buffer behind and raises.
- Writer liveness: the replica writing a session refreshes its ``alive`` key every
  ``HEARTBEAT_S``. A follower that finds the session not done and the key lapsed (the writer's
  process died: SIGKILL, OOM, power) finishes the session itself, atomically and only if it is
  still at the offset the follower read: one ``service_unavailable`` error event (with its
  offset id, like any event) and the end marker. Every follower and every later replay then ends
  with the same bytes, offsets stay exact, and a writer that was only stalled stops at its next
  append (the session is done). A follower of a dead writer ends within ``ALIVE_MS + BLOCK_MS``.
- Connection failures become ``ServiceUnavailable``; only sessions touch Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ferry.errors import ServiceUnavailable
from ferry.sse import Event, encode
from ferry.streams import redis_scripts
from ferry.streams.base import (
    Session,
    SessionInfo,
    beyond_end,
    check_conv_id,
    lost_offset,
    not_found,
    parse_last_event_id,
)

log = logging.getLogger(__name__)

LIVE_LEASE = 600.0  # s a live session survives without an append (a crashed replica's garbage)
CANCEL_GRACE_MS = 60_000  # a cancelled session's keys linger: followers drain, writers learn
BLOCK_MS = 5_000  # one XREAD wait; after an idle one the follower checks the session still exists
HEARTBEAT_S = 2.0  # how often a replica refreshes the alive keys of the sessions it writes
ALIVE_MS = 10_000  # an alive key not refreshed for this long means its writer is gone
READ_COUNT = 512  # entries per XREAD: whole events, typically tens of KiB

_Arg = bytes | str | int | float  # what a script argument may be
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # XREAD entries (replies are never decoded)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ServiceUnavailable(f"stream store (Redis) is unreachable: {exc}") from exc


# KEYS: meta, data, alive.  ARGV: expected total, error event bytes, completed_at, ttl_ms.
# Finishes a session whose writer stopped heartbeating with an error event; returns 1 if it did.
# (Next to its only caller rather than in redis_scripts, to keep the liveness change in one file.)
WRITER_GONE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local m = redis.call('HMGET', KEYS[1], 'done', 'total', 'retained')
if m[1] ~= '0' or m[2] ~= ARGV[1] then return 0 end
local n = string.len(ARGV[2])
redis.call('XADD', KEYS[2], m[2] .. '-1', 'd', ARGV[2])
local total = tonumber(m[2]) + n
redis.call('HSET', KEYS[1], 'done', '1', 'completed_at', ARGV[3], 'total', total,
  'retained', tonumber(m[3]) + n)
redis.call('XADD', KEYS[2], total .. '-1', 'x', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""


def _writer_gone(conv_id: str, offset: int) -> bytes:
    """The terminal event stored when the session's writer stopped heartbeating."""
    err = ServiceUnavailable(
        f"the replica generating conversation {conv_id!r} stopped (no heartbeat for "
        f"{ALIVE_MS // 1000} s); the stream is incomplete, start a new generation"
    )
    return encode(Event(err.to_body()), id=str(offset))


class _Keys:
    def __init__(self, prefix: str, owner: str | None, conv_id: str, sid: str) -> None:
        ns = "-" if owner is None else hashlib.sha256(owner.encode()).hexdigest()[:32]
        self.pointer = f"{prefix}:conv:{ns}:{conv_id}"
        self.meta = f"{prefix}:meta:{sid}"
        self.data = f"{prefix}:data:{sid}"
        self.alive = f"{prefix}:alive:{sid}"
        self.all = [self.pointer, self.meta, self.data]


class RedisSession(Session):
    def __init__(self, store: RedisStore, conv_id: str, sid: str, keys: _Keys) -> None:
        super().__init__(conv_id)
        self.sid = sid
        self.keys = keys
        self._store = store
        self._finished = False
        self._lost = False  # Redis dropped the session: stop storing, keep generating

    async def _append(self, data: bytes) -> bool:
        store = self._store
        if self._lost:
            return False
        args: list[_Arg] = [self.sid, data, store.buffer_bytes, int(store.lease * 1000)]
        with _reachable():
            total = await store._append(keys=self.keys.all, args=args)
        if total == -2:
            log.warning(
                "stream %s (%s) vanished from Redis; no longer stored", self.sid, self.conv_id
            )
            self._lost = True
        elif total < 0:
            self._store._forget(self)
            self.cancelled.set()
        return total >= 0

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._store._forget(self)
        args: list[_Arg] = [self.sid, time.time(), int(self._store.ttl * 1000)]
        with _reachable():
            await self._store._finish(keys=self.keys.all, args=args)


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        buffer_bytes: int,
        ttl: float,
        lease: float = LIVE_LEASE,
        prefix: str = "ferry:streams",
    ) -> None:
        self.buffer_bytes = buffer_bytes
        self.ttl = ttl
        self.lease = max(lease, ttl)
        self.prefix = prefix
        self._channel = f"{prefix}:cancel"
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=BLOCK_MS / 1000 + 5.0,  # longer than one blocking XREAD
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        self._open = self._redis.register_script(redis_scripts.OPEN)
        self._append = self._redis.register_script(redis_scripts.APPEND)
        self._finish = self._redis.register_script(redis_scripts.FINISH)
        self._cancel = self._redis.register_script(redis_scripts.CANCEL)
        self._start = self._redis.register_script(redis_scripts.START)
        self._writer_gone = self._redis.register_script(WRITER_GONE)
        self._local: dict[str, RedisSession] = {}  # live sessions this replica writes
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def open(self, conv_id: str, owner: str | None) -> RedisSession:
        sid = uuid.uuid4().hex
        keys = _Keys(self.prefix, owner, check_conv_id(conv_id), sid)
        with _reachable():
            args: list[_Arg] = [sid, time.time(), int(self.lease * 1000), conv_id]
            old = await self._open(keys=[keys.pointer, keys.meta], args=args)
            await self._redis.set(keys.alive, b"1", px=ALIVE_MS)
            if old is not None:
                await self._cancel_sid(_Keys(self.prefix, owner, conv_id, _text(old)), evict=False)
            await self._ensure_listening()
        session = RedisSession(self, conv_id, sid, keys)
        self._local[sid] = session
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name="ferry-streams-heartbeat")
        return session

    async def lookup(self, conv_ids: list[str], owner: str | None) -> list[SessionInfo]:
        for conv_id in conv_ids:
            check_conv_id(conv_id, param="conversation_ids")
        pointers = [_Keys(self.prefix, owner, c, "").pointer for c in conv_ids]
        with _reachable():
            sids = await self._redis.mget(pointers) if pointers else []
            found = [(c, _text(sid)) for c, sid in zip(conv_ids, sids) if sid is not None]
            pipe = self._redis.pipeline(transaction=False)
            for _, sid in found:
                fields = ("done", "total", "started_at", "completed_at", "cancelled")
                pipe.hmget(f"{self.prefix}:meta:{sid}", *fields)
            metas = await pipe.execute()
        return [
            SessionInfo(c, m[0] == b"1", int(m[1]), float(m[2]), float(m[3]) if m[3] else None)
            for (c, _), m in zip(found, metas)
            if m[0] is not None and m[4] != b"1"  # expired, or replaced since the GET
        ]

    async def delete(self, conv_id: str, owner: str | None) -> None:
        keys = _Keys(self.prefix, owner, conv_id, "")
        with _reachable():
            sid = await self._redis.get(keys.pointer)
            if sid is not None:
                await self._cancel_sid(_Keys(self.prefix, owner, conv_id, _text(sid)), evict=True)

    async def replay(
        self,
        conv_id: str,
        owner: str | None,
        *,
        offset: int = 0,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        param = "from" if last_event_id is None else "Last-Event-ID"
        start = offset if last_event_id is None else parse_last_event_id(last_event_id)
        if start < 0:
            raise beyond_end(conv_id, start, 0, param=param)
        with _reachable():
            sid = await self._redis.get(_Keys(self.prefix, owner, conv_id, "").pointer)
            if sid is None:
                raise not_found(conv_id)
            keys = _Keys(self.prefix, owner, conv_id, _text(sid))
            mode = "o" if last_event_id is None else "e"
            res = await self._start(keys=[keys.meta, keys.data], args=[mode, start])
        status = _text(res[0])
        if status == "gone":
            raise not_found(conv_id)
        if status == "beyond":
            raise beyond_end(conv_id, start, int(res[1]), param=param)
        if status == "lost":
            raise lost_offset(conv_id, start, int(res[1]), param=param)
        _, resumed_at, entry_id, first, is_end = res
        return self._follow(
            keys, conv_id, int(resumed_at) + len(first), entry_id, first, is_end == 1
        )

    async def close(self) -> None:
        for task in (self._listener, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._redis.aclose()

    async def _follow(
        self, keys: _Keys, conv_id: str, pos: int, last_id: bytes, first: bytes, ended: bool
    ) -> AsyncGenerator[bytes, None]:
        """``first``, then the stream's entries after ``last_id`` until the end marker."""
        if first:
            yield first
        while not ended:
            with _reachable():
                reply = await self._redis.xread(
                    {keys.data: last_id}, count=READ_COUNT, block=BLOCK_MS
                )
                if not reply:
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.hget(keys.meta, "done")
                    pipe.exists(keys.alive)
                    done, alive = await pipe.execute()
                    if done is None:
                        return  # expired or evicted while idle
                    if done == b"0" and not alive:
                        event = _writer_gone(conv_id, pos)
                        args: list[_Arg] = [pos, event, time.time(), int(self.ttl * 1000)]
                        await self._writer_gone(keys=[keys.meta, keys.data, keys.alive], args=args)
                    continue  # the next XREAD returns the error event and the end marker
            entries = cast(_Entries, reply[0][1]) if reply else []  # type: ignore[index]
            parts: list[bytes] = []
            for entry_id, fields in entries:
                start = int(entry_id.split(b"-", 1)[0])
                if start != pos:  # trimmed past us: fail rather than skip bytes
                    raise lost_offset(conv_id, pos, start, param="from")
                if b"d" not in fields:
                    ended = True
                    break
                parts.append(fields[b"d"])
                pos += len(fields[b"d"])
                last_id = entry_id
            if parts:
                yield b"".join(parts)

    async def _cancel_sid(self, keys: _Keys, *, evict: bool) -> None:
        sid = keys.meta.rsplit(":", 1)[1]
        local = self._local.pop(sid, None)
        if local is not None:
            local.cancelled.set()
        args: list[_Arg] = [sid, time.time(), CANCEL_GRACE_MS, self._channel, "1" if evict else "0"]
        await self._cancel(keys=keys.all, args=args)

    async def _beat(self) -> None:
        """Refresh the alive key of every session this replica writes (see the invariants)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            sessions = list(self._local.values())
            if not sessions:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for session in sessions:
                    pipe.set(session.keys.alive, b"1", px=ALIVE_MS)
                await pipe.execute()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("stream store heartbeat failed (%s); retrying", exc)

    def _forget(self, session: RedisSession) -> None:
        self._local.pop(session.sid, None)

    async def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="ferry-streams-cancel")
        try:
            await asyncio.wait_for(self._listening.wait(), timeout=3.0)
        except TimeoutError as exc:
            raise ServiceUnavailable("stream store (Redis) cancel channel is unreachable") from exc

    async def _listen(self) -> None:
        """Set ``cancelled`` on local sessions named on the cancel channel; resubscribe on loss."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._listening.set()
                    await self._recheck_local()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message["type"] == "message":
                            session = self._local.pop(_text(message["data"]), None)
                            if session is not None:
                                session.cancelled.set()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._listening.clear()
                log.warning("stream store cancel channel lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)

    async def _recheck_local(self) -> None:
        for session in list(self._local.values()):
            pointer, cancelled = await asyncio.gather(
                self._redis.get(session.keys.pointer),
                self._redis.hget(session.keys.meta, "cancelled"),
            )
            replaced = pointer is not None and pointer != session.sid.encode()
            if replaced or cancelled == b"1":  # a missing session is lost, not cancelled
                self._forget(session)
                session.cancelled.set()
