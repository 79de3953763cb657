"""Training: LoRA, QLoRA and full fine-tuning on prepared data (see run.py)."""
