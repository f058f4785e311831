"""The live server and its clients come from tests/conftest.py (shared with tests/metrics and tests/deploy)."""
