"""The training stage: data checks, head-only baseline and LoRA training, evaluation, reports."""
