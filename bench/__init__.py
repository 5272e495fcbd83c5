"""Benchmarks of rayconf; run them with `make bench`, never as part of `make test`."""
