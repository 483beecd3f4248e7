"""Run the real ServerApp strategy against the real ClientApp in one process (tests and
benchmarks). Not part of the deployed apps: it imports both of them."""
