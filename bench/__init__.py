"""Benchmarks: ratios measured side by side in one run. ``python bench/run_all.py`` runs them all
(see bench/README.md). Not part of the installed package."""
