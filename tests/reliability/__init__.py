"""Reliability under load, faults and hostile input (issue 10); see common.py for the sizes."""
