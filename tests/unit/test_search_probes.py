"""Which tenants a search-probe pass takes: Ready ones with vectors, round the class from where the last pass
stopped, never more than the rate allows; and the SLO's settings."""
from __future__ import annotations

import pytest

from tenantstore import slo
from tenantstore.models import InvalidResource, SearchSlo, StoreClass


def tenant(uid: str, documents: int = 10, phase: str = "Ready") -> dict:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "n"}, "spec": {"tenantId": uid},
            "status": {"phase": phase, "relational": {"role": f"tenant_{uid}"}, "usage": {"documents": documents},
                       "vectorStore": {"backend": "pgvector", "index": "shared-3-cosine-1", "namespace": uid}}}


def uids(bodies: list[dict]) -> list[str]:
    return [body["metadata"]["uid"] for body in bodies]


def test_only_ready_tenants_with_vectors_are_probed() -> None:
    tenants = [tenant("c"), tenant("a"), tenant("empty", documents=0), tenant("asleep", phase="Suspended"),
               tenant("b")]
    assert uids(slo.probed_tenants(tenants)) == ["a", "b", "c"]


def test_passes_go_round_the_tenants_from_where_the_last_one_stopped() -> None:
    eligible = slo.probed_tenants([tenant(uid) for uid in "abcde"])
    assert uids(slo.this_turn(eligible, "", 2)) == ["a", "b"]
    assert uids(slo.this_turn(eligible, "b", 2)) == ["c", "d"]
    assert uids(slo.this_turn(eligible, "d", 2)) == ["e", "a"]
    assert uids(slo.this_turn(eligible, "bb", 2)) == ["c", "d"]  # the last one was deleted: its successor
    assert uids(slo.this_turn(eligible, "e", 10)) == ["a", "b", "c", "d", "e"]  # each at most once a pass
    assert slo.this_turn([], "a", 3) == []


def test_the_objective_is_read_from_the_class() -> None:
    assert SearchSlo.from_dict({"searchLatency": {"p95": "50ms"}}) == SearchSlo(0.05, 2.0, 5)
    assert SearchSlo.from_dict({"searchLatency": {"p95": "0.2s"}, "probesPerSecond": 10, "topK": 3}) == \
        SearchSlo(0.2, 10.0, 3)
    assert SearchSlo.from_dict(None) is None
    with pytest.raises(InvalidResource, match="not a latency"):
        SearchSlo.from_dict({"searchLatency": {"p95": "fast"}})


async def test_a_pass_is_spaced_by_the_rate_and_stops_when_asked() -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> bool:
        pauses.append(seconds)
        return len(pauses) >= 3  # stop before the fourth probe

    class Vectors:
        probed: list[str] = []

        async def probe_search(self, store, placement, vector, top_k):  # noqa: ANN001, ANN201 (a fake)
            self.probed.append(store.tenant_id)
            assert len(vector) == 3 and top_k == 4
            return 0.01

    store_class = StoreClass.from_body({"metadata": {"name": "c"}, "spec": {
        "postgres": {"adminSecretRef": {"name": "a", "namespace": "b"}}}})
    tenants = [{**tenant(uid), "spec": {"tenantId": uid, "tier": "free", "vector": {"dimension": 3}}}
               for uid in "abcdefgh"]
    vectors = Vectors()
    probes = await slo.ProbePass().run(store_class, SearchSlo(0.05, probes_per_second=4, top_k=4), tenants,
                                       vectors, interval=2, pause=pause)  # type: ignore[arg-type]
    assert vectors.probed == ["a", "b", "c"] and [p.seconds for p in probes] == [0.01] * 3
    assert all(0 < seconds <= 0.25 for seconds in pauses)
