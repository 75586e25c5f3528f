"""Adapting models to a user's data (contrastive fine-tuning, GradCache)."""
