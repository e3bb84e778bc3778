"""The fast tier: the operator's decisions (reconcile, teardown, usage, verification, tier moves) against
in-memory fakes of its backends and of Kubernetes. Nothing here starts a process or opens a socket."""
from __future__ import annotations

import pytest

from .world import World


@pytest.fixture
def world() -> World:
    """A StoreClass `standard` (the default, pgvector), empty fakes, and namespaces customers, partners, sandbox."""
    return World.make()
