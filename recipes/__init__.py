"""Scripts launched as processes: one fine-tuning rank (finetune.py), one isolated specialist job
(specialist_job.py). Short; they compose tasks/ and nothing imports them."""
