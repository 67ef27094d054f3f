"""Behaviour of ferry.streams stores, each test run against the memory store and a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
from conftest import free_port, start_redis, stop_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.errors import InvalidRequest, NotFound, ServiceUnavailable
from ferry.streams import Session, StreamStore, make_store

pytestmark = pytest.mark.timeout(60)

MakeStore = Callable[..., StreamStore]


_free_port = free_port
_start_redis = start_redis
_stop_redis = stop_redis


@pytest.fixture(scope="module", params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return "memory" if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
async def make(backend: str) -> AsyncIterator[MakeStore]:
    stores: list[StreamStore] = []

    def _make(buffer_bytes: int = 1 << 20, ttl: float = 60.0) -> StreamStore:
        store = make_store(backend, buffer_bytes=buffer_bytes, ttl=ttl)
        stores.append(store)
        return store

    yield _make
    for store in stores:
        await store.close()


def _conv() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


def _event(session: Session, text: str) -> bytes:
    return f"id: {session.next_event_id()}\ndata: {text}\n\n".encode()


async def _write(session: Session, texts: list[str]) -> bytes:
    sent = b""
    for text in texts:
        event = _event(session, text)
        await session.append(event, session.next_event_id())
        sent += event
    return sent


async def _read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def _eventually(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- byte-exact resumption (property) -----------------------------------------------------------


def _kept_from(starts: list[int], sizes: list[int], capacity: int) -> int:
    """Model of the ring: the oldest kept event is the first whose suffix fits, or the newest."""
    for i in range(len(sizes)):
        if sum(sizes[i:]) <= capacity:
            return starts[i]
    return starts[-1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=30),
    capacity=st.integers(min_value=1, max_value=4000),
    cut=st.integers(min_value=0, max_value=10_000),
    pick=st.integers(min_value=0, max_value=10_000),
)
def test_prefix_plus_replay_from_any_kept_offset_is_the_whole_stream(
    backend: str, events: list[bytes], capacity: int, cut: int, pick: int
) -> None:
    async def scenario() -> None:
        store = make_store(backend, buffer_bytes=capacity, ttl=60)
        try:
            conv = _conv()
            session = await store.open(conv, None)
            starts = []
            for event in events:
                starts.append(session.total_bytes)
                await session.append(event, session.next_event_id())
            await session.finish()
            whole = b"".join(events)
            ring_start = _kept_from(starts, [len(e) for e in events], capacity)

            offset = cut % (len(whole) + 1)
            if offset < ring_start:
                with pytest.raises(InvalidRequest) as err:
                    await store.replay(conv, None, offset=offset)
                assert err.value.param == "from"
            else:
                rest = await _read_all(await store.replay(conv, None, offset=offset))
                assert whole[:offset] + rest == whole

            k = pick % len(events)
            end_of_k = starts[k] + len(events[k])
            if end_of_k < ring_start:
                with pytest.raises(InvalidRequest) as err:
                    await store.replay(conv, None, last_event_id=str(starts[k]))
                assert err.value.param == "Last-Event-ID"
            else:
                rest = await _read_all(await store.replay(conv, None, last_event_id=str(starts[k])))
                assert whole[:end_of_k] + rest == whole
        finally:
            await store.close()

    asyncio.run(scenario())


# -- live follow ----------------------------------------------------------------------------------


async def test_reader_started_before_the_end_gets_everything_and_ends_after_finish(
    make: MakeStore,
) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    head = await _write(session, ["a", "b"])
    reader = asyncio.create_task(_read_all(await store.replay(conv, None, offset=1)))
    await asyncio.sleep(0.05)
    tail = await _write(session, [f"token {i}" for i in range(50)])
    await asyncio.sleep(0.05)
    assert not reader.done()  # still following: the session is not finished
    await session.finish()
    assert await asyncio.wait_for(reader, 5) == (head + tail)[1:]


async def test_client_that_disconnects_mid_stream_resumes_with_exactly_the_rest(
    make: MakeStore,
) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    sent = await _write(session, ["a" * 10, "b" * 10])
    chunks = await store.replay(conv, None)
    seen = await chunks.__anext__()
    await chunks.aclose()  # the client went away
    sent += await _write(session, ["c" * 10])  # the generation keeps running
    resumed = asyncio.create_task(_read_all(await store.replay(conv, None, offset=len(seen))))
    sent += await _write(session, ["d" * 10])
    await session.finish()
    assert seen + await asyncio.wait_for(resumed, 5) == sent


async def test_reader_of_an_unstarted_stream_waits_for_the_first_event(make: MakeStore) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    reader = asyncio.create_task(_read_all(await store.replay(conv, None)))
    await asyncio.sleep(0.05)
    async with session:
        sent = await _write(session, ["first", "second"])
    assert await asyncio.wait_for(reader, 5) == sent


async def test_last_event_id_of_the_newest_event_resumes_live(make: MakeStore) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    await _write(session, ["a"])
    newest = session.next_event_id()
    await _write(session, ["b"])
    reader = asyncio.create_task(_read_all(await store.replay(conv, None, last_event_id=newest)))
    later = await _write(session, ["c"])
    await session.finish()
    assert await asyncio.wait_for(reader, 5) == later


# -- errors ---------------------------------------------------------------------------------------


async def test_dropped_offset_is_a_clear_400_not_silently_skipped_bytes(make: MakeStore) -> None:
    store, conv = make(buffer_bytes=64), _conv()
    session = await store.open(conv, None)
    await _write(session, [f"event number {i}" for i in range(20)])
    with pytest.raises(InvalidRequest) as err:
        await store.replay(conv, None, offset=0)
    assert err.value.param == "from" and "dropped" in err.value.message
    with pytest.raises(InvalidRequest) as err:
        await store.replay(conv, None, last_event_id="0")
    assert err.value.param == "Last-Event-ID"


async def test_reader_that_falls_a_whole_buffer_behind_fails_instead_of_skipping(
    make: MakeStore,
) -> None:
    store, conv = make(buffer_bytes=200), _conv()
    session = await store.open(conv, None)
    await _write(session, ["x" * 20])
    chunks = await store.replay(conv, None)
    await chunks.__anext__()
    await _write(session, [f"{i}" * 30 for i in range(20)])
    await session.finish()
    with pytest.raises(InvalidRequest):
        async for _ in chunks:
            pass


async def test_offsets_beyond_the_stream_and_bad_event_ids_are_rejected(make: MakeStore) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    sent = await _write(session, ["a"])
    with pytest.raises(InvalidRequest):
        await store.replay(conv, None, offset=len(sent) + 1)
    with pytest.raises(InvalidRequest):
        await store.replay(conv, None, offset=-1)
    with pytest.raises(InvalidRequest):
        await store.replay(conv, None, last_event_id="not-an-offset")


async def test_unknown_conversation_is_not_found(make: MakeStore) -> None:
    with pytest.raises(NotFound):
        await make().replay(_conv(), None)


async def test_invalid_conversation_ids_are_rejected(make: MakeStore) -> None:
    with pytest.raises(InvalidRequest):
        await make().open("has space", None)
    with pytest.raises(InvalidRequest):
        await make().open("x" * 129, None)
    await make().open("query/form:ok-1.2_3", None)


def test_append_checks_the_event_id_it_is_given() -> None:
    async def scenario() -> None:
        session = await make_store("memory", buffer_bytes=100, ttl=1).open("c", None)
        await session.append(b"data: a\n\n", "0")
        with pytest.raises(ValueError, match="is not next_event_id"):
            await session.append(b"data: b\n\n", "0")
        assert session.next_event_id() == "9"

    asyncio.run(scenario())


# -- lookup, replace, delete, ttl, owners --------------------------------------------------------


async def test_lookup_returns_only_the_asked_known_sessions(make: MakeStore) -> None:
    store = make()
    done_id, live_id, other_id, unknown_id = _conv(), _conv(), _conv(), _conv()
    before = time.time()
    done = await store.open(done_id, None)
    sent = await _write(done, ["x"])
    await done.finish()
    await store.open(live_id, None)
    await store.open(other_id, None)
    infos = await store.lookup([unknown_id, live_id, done_id], None)
    assert [i.conversation_id for i in infos] == [live_id, done_id]
    live, finished = infos
    assert (live.is_done, live.total_bytes, live.completed_at) == (False, 0, None)
    assert (finished.is_done, finished.total_bytes) == (True, len(sent))
    assert finished.completed_at is not None
    assert before - 1 <= finished.started_at <= finished.completed_at <= time.time() + 1
    assert await store.lookup([], None) == []


async def test_opening_a_conversation_again_cancels_and_replaces_the_first(
    make: MakeStore,
) -> None:
    store, conv = make(), _conv()
    first = await store.open(conv, None)
    await _write(first, ["old"])
    follower = asyncio.create_task(_read_all(await store.replay(conv, None)))
    second = await store.open(conv, None)
    assert first.cancelled.is_set() and not second.cancelled.is_set()
    await first.append(b"data: late\n\n")  # dropped: the first generation was replaced
    assert b"late" not in await asyncio.wait_for(follower, 5)
    sent = await _write(second, ["new"])
    await second.finish()
    assert await _read_all(await store.replay(conv, None)) == sent


async def test_delete_cancels_evicts_and_is_idempotent(make: MakeStore) -> None:
    store, conv = make(), _conv()
    session = await store.open(conv, None)
    await _write(session, ["a"])
    follower = asyncio.create_task(_read_all(await store.replay(conv, None)))
    await store.delete(conv, None)
    assert session.cancelled.is_set()
    await asyncio.wait_for(follower, 5)  # the follower ends instead of waiting forever
    with pytest.raises(NotFound):
        await store.replay(conv, None)
    assert await store.lookup([conv], None) == []
    await store.delete(conv, None)
    await store.delete(_conv(), None)
    await session.finish()  # a generation finishing after the delete changes nothing
    assert await store.lookup([conv], None) == []


async def test_finished_session_expires_after_ttl(make: MakeStore) -> None:
    store, conv = make(ttl=0.3), _conv()
    session = await store.open(conv, None)
    await _write(session, ["a"])
    await session.finish()
    assert len(await store.lookup([conv], None)) == 1
    await asyncio.sleep(0.6)
    assert await store.lookup([conv], None) == []
    with pytest.raises(NotFound):
        await store.replay(conv, None)


async def test_sessions_are_invisible_to_other_owners(make: MakeStore) -> None:
    store, conv = make(), _conv()
    mine = await store.open(conv, "key-a")
    sent = await _write(mine, ["secret"])
    with pytest.raises(NotFound):
        await store.replay(conv, "key-b")
    with pytest.raises(NotFound):
        await store.replay(conv, None)
    assert await store.lookup([conv], "key-b") == []
    await store.delete(conv, "key-b")
    theirs = await store.open(conv, "key-b")  # same id, other owner: a separate session
    assert not mine.cancelled.is_set()
    await mine.finish()
    await theirs.finish()
    assert await _read_all(await store.replay(conv, "key-a")) == sent


# -- Redis only: replicas, outages, garbage ------------------------------------------------------


async def test_another_replica_replays_follows_and_cancels(redis_url: str) -> None:
    writer_side = make_store(redis_url, buffer_bytes=1 << 20, ttl=60)
    reader_side = make_store(redis_url, buffer_bytes=1 << 20, ttl=60)
    try:
        conv = _conv()
        session = await writer_side.open(conv, "k")
        head = await _write(session, ["one", "two"])
        follower = asyncio.create_task(_read_all(await reader_side.replay(conv, "k")))
        await asyncio.sleep(0.05)
        tail = await _write(session, ["three"])
        await session.finish()
        assert await asyncio.wait_for(follower, 5) == head + tail
        assert await _read_all(await reader_side.replay(conv, "k", offset=3)) == (head + tail)[3:]

        live = await writer_side.open(conv, "k")
        follower = asyncio.create_task(_read_all(await reader_side.replay(conv, "k")))
        await reader_side.delete(conv, "k")
        assert await _eventually(live.cancelled.is_set, within=1.0)
        await asyncio.wait_for(follower, 5)

        again = await writer_side.open(conv, "k")
        await reader_side.open(conv, "k")  # a new POST landing on the other replica
        assert await _eventually(again.cancelled.is_set, within=1.0)
    finally:
        await writer_side.close()
        await reader_side.close()


async def test_redis_keys_always_carry_a_ttl(redis_url: str) -> None:
    store = make_store(redis_url, buffer_bytes=100, ttl=30)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        conv = _conv()
        session = await store.open(conv, None)
        await _write(session, [str(i) * 40 for i in range(10)])
        finished = await store.open(_conv(), None)
        await finished.finish()
        keys = [k async for k in client.scan_iter(match="ferry:streams:*")]
        assert keys
        ttls = [await client.pttl(k) for k in keys]
        assert all(ttl > 0 for ttl in ttls), dict(zip(keys, ttls))
    finally:
        await client.aclose()
        await store.close()


async def test_every_call_raises_service_unavailable_when_redis_is_down() -> None:
    store = make_store(f"redis://127.0.0.1:{_free_port()}/0", buffer_bytes=100, ttl=1)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceUnavailable):
            await store.open(_conv(), None)
        assert time.monotonic() - started < 5
        with pytest.raises(ServiceUnavailable):
            await store.lookup([_conv()], None)
        with pytest.raises(ServiceUnavailable):
            await store.replay(_conv(), None)
        with pytest.raises(ServiceUnavailable):
            await store.delete(_conv(), None)
    finally:
        await store.close()


async def test_cancel_still_reaches_the_writer_after_a_redis_restart(tmp_path: Path) -> None:
    port, aof = _free_port(), ("--appendonly", "yes", "--appendfsync", "always")
    proc = _start_redis(port, str(tmp_path), *aof)
    url = f"redis://127.0.0.1:{port}/0"
    writer_side = make_store(url, buffer_bytes=1 << 20, ttl=60)
    other_side = make_store(url, buffer_bytes=1 << 20, ttl=60)
    try:
        conv = _conv()
        session = await writer_side.open(conv, None)
        sent = await _write(session, ["before"])
        _stop_redis(proc)
        proc = _start_redis(port, str(tmp_path), *aof)
        await asyncio.sleep(1.5)  # the writer's cancel listener notices and resubscribes
        assert not session.cancelled.is_set()  # a restart alone cancels nothing
        sent += await _write(session, ["after"])
        [info] = await other_side.lookup([conv], None)
        assert info.total_bytes == len(sent)
        await other_side.delete(conv, None)
        assert await _eventually(session.cancelled.is_set, within=1.0)
    finally:
        await writer_side.close()
        await other_side.close()
        _stop_redis(proc)
