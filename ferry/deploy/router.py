"""Ray Serve's custom request router API around ``ferry.deploy.routing.RouteTable``.

The router runs inside each deployment handle (so in every front door), not in the replicas.
Requests carry their ``RouteHint`` as the ``route`` keyword argument of the replica method.
"""

from __future__ import annotations

import logging

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from ferry.deploy.routing import RouteHint, RouteTable

log = logging.getLogger(__name__)


def _hint(pending: PendingRequest | None) -> RouteHint | None:
    if pending is None:
        return None
    hint = pending.kwargs.get("route")
    return hint if isinstance(hint, RouteHint) else None


class FerryRequestRouter(RequestRouter):
    """Conversation affinity, then longest cached prefix, then least loaded (Serve probes the
    queue lengths of a rank and picks the shortest)."""

    # Serve passes request_router_kwargs; Ray's base declares **kwargs, and routers name theirs
    def initialize_state(  # type: ignore[override]
            self, min_match: float = 0.1, imbalance: int = 8) -> None:
        self.table = RouteTable(min_match=min_match, imbalance=imbalance)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        load = {}
        for rid, r in by_id.items():
            n = self.replica_queue_len_cache.get(r.replica_id)
            if n is not None:
                load[rid] = n
        ranks = self.table.rank(list(by_id), _hint(pending_request), load)
        if pending_request is not None:
            # Every pass considers every replica, so a pass that placed nothing (replicas full,
            # a targeted replica gone) must back off before the next: without this, Serve
            # retries at once and a choice with no candidates spins the handle's event loop.
            pending_request.routing_context.should_backoff = True
        return [[by_id[rid] for rid in rank] for rank in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result) -> None:
        self.table.routed(replica_id.unique_id, _hint(pending_request))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.table.keep_only([r.replica_id.unique_id for r in replicas])
