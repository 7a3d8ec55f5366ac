"""Validation: rule filters, dedup, LLM judges, splits, gates and the report."""
