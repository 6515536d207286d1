"""End-to-end experiments built from the library's CLIs (docs/experiment_hh.md)."""
