"""Optimizee tasks and their data."""
