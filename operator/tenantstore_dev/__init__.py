"""The local environment the demo, the tests and the benchmark run on: a real control plane, an embedded
Postgres, and their composition. A checkout's tool, never part of the operator's wheel or image."""
