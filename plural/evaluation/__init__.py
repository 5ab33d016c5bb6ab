"""Evaluation: metrics and the few-shot curve."""
