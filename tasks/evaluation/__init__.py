"""Evaluation (SPEC §7, §8): the GSCo arms on every benchmark test split -> parsed answers -> metrics with bootstrap
CIs -> report."""
