"""Benchmarks of the TenantStore operator (issue 7): `python -m bench.provisioning`, see bench/README.md."""
