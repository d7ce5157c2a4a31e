"""The one test kit every suite loads (``pytest_plugins`` in tests/conftest.py).

Fixtures come from the plugins; helpers are imported from their module, always as
``from tests.kit.<module> import ...``. docs/internals.md ("Tests") says which to use for what.
"""
