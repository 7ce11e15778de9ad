"""Datasets in: raw files -> loaders -> validated canonical `samples` tables (SPEC §2, first arrow), and the tiny
benchmark generated in the real raw formats."""
