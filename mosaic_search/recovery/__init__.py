"""Stage 5, recovery: `distill` (settings record, losses, checkpoints, the training loop)."""
