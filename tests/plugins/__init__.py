"""pytest plugin modules, registered from tests/conftest.py (``pytest_plugins``)."""
