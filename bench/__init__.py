"""Benchmarks: `make bench`. They print figures and ratios and never fail on timing."""
