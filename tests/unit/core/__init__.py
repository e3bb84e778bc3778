"""The reconcile core against in-memory fakes: no control plane, no Postgres."""
