"""The response stores (memory and a real redis-server) keep the same contract: owner
isolation, whole-record saves, TTL expiry, and updates that never bring back a deleted record."""

from __future__ import annotations

import asyncio

import pytest

from ferry.errors import NotFound
from ferry.response_store import StoredResponse, make_response_store
from ferry.response_store.memory import MemoryResponseStore


def record(rid: str = "resp_1", status: str = "completed") -> StoredResponse:
    return StoredResponse({"id": rid, "status": status, "output": []},
                          [{"id": "msg_1", "type": "message"}])


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    url = "memory" if request.param == "memory" else request.getfixturevalue("redis_url")
    s = make_response_store(url, ttl=0.5)
    yield s
    await s.close()


async def test_saved_record_reads_back_for_its_owner_only(store):
    await store.save("alice", record())
    got = await store.get("alice", "resp_1")
    assert got.to_json() == record().to_json() and got.done
    for owner in ("bob", None):
        with pytest.raises(NotFound):
            await store.get(owner, "resp_1")
        with pytest.raises(NotFound):
            await store.delete(owner, "resp_1")
    await store.delete("alice", "resp_1")
    with pytest.raises(NotFound):
        await store.get("alice", "resp_1")


async def test_update_replaces_but_never_recreates_a_deleted_record(store):
    await store.save(None, record(status="in_progress"))
    await store.save(None, record(status="cancelled"), update=True)
    assert (await store.get(None, "resp_1")).status == "cancelled"
    await store.delete(None, "resp_1")
    await store.save(None, record(status="completed"), update=True)
    with pytest.raises(NotFound):
        await store.get(None, "resp_1")


async def test_records_expire_after_the_ttl(store):
    await store.save(None, record("resp_ttl"))
    await asyncio.sleep(0.7)
    with pytest.raises(NotFound):
        await store.get(None, "resp_ttl")


async def test_memory_store_copies_records_and_resaving_restarts_the_ttl():
    now = [0.0]
    s = MemoryResponseStore(ttl=10, clock=lambda: now[0])
    r = record()
    await s.save(None, r)
    r.response["status"] = "failed"  # the caller's copy, not the stored one
    assert (await s.get(None, "resp_1")).status == "completed"
    now[0] = 8
    await s.save(None, r)
    now[0] = 15  # 15 > first expiry (10), < second (18)
    assert (await s.get(None, "resp_1")).status == "failed"
    now[0] = 18
    with pytest.raises(NotFound):
        await s.get(None, "resp_1")
