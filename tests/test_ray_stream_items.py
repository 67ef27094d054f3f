"""How a replica turns a stream's chunks into Ray streaming items (pure asyncio; the end-to-end
tests through Ray are test_ray_deploy)."""

from __future__ import annotations

import asyncio

import pytest

from ferry.deploy.replica import coalesced


async def _source(queue: asyncio.Queue, closed: list[bool]):
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        closed.append(True)


async def test_chunks_ready_together_leave_as_one_item_in_order():
    q: asyncio.Queue = asyncio.Queue()
    closed: list[bool] = []
    out = coalesced(_source(q, closed))
    q.put_nowait(b"a")
    assert await out.__anext__() == b"a"  # one ready chunk is not held back
    for c in (b"b", b"c", b"d"):
        q.put_nowait(c)
    await asyncio.sleep(0.01)  # the consumer lags: three chunks pile up
    assert await out.__anext__() == b"bcd"
    q.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await out.__anext__()
    assert closed == [True]


async def test_an_error_comes_after_the_bytes_read_before_it():
    q: asyncio.Queue = asyncio.Queue()
    out = coalesced(_source(q, []))
    q.put_nowait(b"x")
    q.put_nowait(RuntimeError("engine gone"))
    await asyncio.sleep(0.01)
    assert await out.__anext__() == b"x"
    with pytest.raises(RuntimeError, match="engine gone"):
        await out.__anext__()


async def test_closing_the_items_closes_the_source():
    q: asyncio.Queue = asyncio.Queue()
    closed: list[bool] = []
    out = coalesced(_source(q, closed))
    q.put_nowait(b"a")
    assert await out.__anext__() == b"a"
    await out.aclose()  # the front door's client went away while the source waits for more
    assert closed == [True]
