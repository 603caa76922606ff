"""Benchmarks of the customer-ai stream (not timed tests): see ``bench/README.md``."""
