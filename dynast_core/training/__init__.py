"""Training: losses, datasets and trainers (see the training issue)."""
