"""MedDr fine-tuning (SPEC §5): run config, data path, adapter, and the training loop one rank runs
(recipes/finetune.py)."""
