"""ComfyUI-free training: the shared LoRA loop, DPG personalization, reward-ranked fine-tuning, RAHF training."""
