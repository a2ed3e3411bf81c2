"""Offline training: dataset loaders, caption pre-computation, the training loop, evaluation, export."""
