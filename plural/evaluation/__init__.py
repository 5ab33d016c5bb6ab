"""Evaluation: metrics, the few-shot curve and the protocol's users and splits."""
