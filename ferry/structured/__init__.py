"""Constrained decoding: JSON-schema structured outputs and tool calling (see constraint.py, tools.py)."""
