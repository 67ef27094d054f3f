"""`stream_events` against an in-process ASGI peer: pings, send timeout, disconnect, cancellation.

The end-to-end versions (real sockets, the real server) are in test_transport.py; these pin the
rules at the edges, where timing over sockets is too coarse.
"""

import asyncio

import pytest

from ferry.sse import PING, stream_events


class Peer:
    """The ASGI side: records bodies; ``block`` makes sends hang; ``disconnect()`` ends it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.block = False
        self._gone = asyncio.Event()

    async def send(self, message: dict) -> None:
        if self.block:
            await asyncio.sleep(3600)
        if message["type"] == "http.response.body":
            self.bodies.append(message["body"])

    async def receive(self) -> dict:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def disconnect(self) -> None:
        self._gone.set()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_stalled_body_gets_pings_between_whole_chunks_and_ends_complete():
    async def body():
        yield b"data: 1\n\n"
        await asyncio.sleep(0.35)
        yield b"data: 2\n\n"

    async def main():
        peer = Peer()
        done = await stream_events(peer.send, peer.receive, body(), ping_interval=0.1,
                                   send_timeout=5)
        return done, peer.bodies

    done, bodies = run(main())
    assert done is True
    chunks = [b for b in bodies if b]
    assert chunks[0] == b"data: 1\n\n" and chunks[-1] == b"data: 2\n\n"
    assert 2 <= chunks.count(PING) <= 4 and set(chunks[1:-1]) == {PING}
    assert bodies[-1] == b""  # the final, more_body=False message


def test_no_ping_while_events_keep_coming():
    async def body():
        for i in range(20):
            await asyncio.sleep(0.02)
            yield b"data: %d\n\n" % i

    async def main():
        peer = Peer()
        await stream_events(peer.send, peer.receive, body(), ping_interval=0.1, send_timeout=5)
        return peer.bodies

    assert PING not in run(main())


def test_a_send_that_hangs_past_send_timeout_ends_the_stream_and_closes_the_body():
    state = {"closed": False}

    async def body():
        try:
            while True:
                yield b"data: x\n\n"
                await asyncio.sleep(0.01)
        finally:
            state["closed"] = True

    async def main():
        peer = Peer()
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, setattr, peer, "block", True)
        t0 = loop.time()
        done = await stream_events(peer.send, peer.receive, body(), ping_interval=0,
                                   send_timeout=0.3)
        return done, loop.time() - t0

    done, took = run(main())
    assert done is False and state["closed"]
    assert 0.3 <= took < 2.0


def test_a_disconnect_closes_the_body_while_it_waits_for_its_next_event():
    state = {"closed": False}

    async def body():
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(3600)  # a queued request or a slow step
            yield b"data: never\n\n"
        finally:
            state["closed"] = True

    async def main():
        peer = Peer()
        asyncio.get_running_loop().call_later(0.1, peer.disconnect)
        done = await stream_events(peer.send, peer.receive, body(), ping_interval=15,
                                   send_timeout=30)
        return done, peer.bodies, asyncio.current_task().cancelling()

    done, bodies, cancelling = run(main())
    assert done is False and state["closed"]
    assert b"data: never\n\n" not in bodies
    assert cancelling == 0  # the disconnect's cancellation was consumed, not left pending


def test_cancelling_the_response_task_propagates_and_closes_the_body():
    state = {"closed": False}

    async def body():
        try:
            await asyncio.sleep(3600)
            yield b""
        finally:
            state["closed"] = True

    async def main():
        peer = Peer()
        t = asyncio.create_task(stream_events(peer.send, peer.receive, body(),
                                              ping_interval=15, send_timeout=30))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(main())
    assert state["closed"]
