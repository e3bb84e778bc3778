"""Benchmarks of the TenantStore operator: `python -m bench.provisioning`, see bench/README.md."""
