"""Helpers shared by tests/test_data*.py (fixtures for the data stage)."""
