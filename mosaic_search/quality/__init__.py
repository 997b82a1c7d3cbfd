"""Predicted and measured quality: `score`, local alignment, the candidate library, held-out evaluation."""
