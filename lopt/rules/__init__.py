"""Learned-optimizer rules."""
