"""The CLI as a user runs it, inside the throw-away world (same fixtures as tests/kernel)."""

from tests.kernel.conftest import (  # noqa: F401 - fixtures and hooks re-used
    _destroy_leftovers,
    _must_be_isolated,
    clean_world,
    pytest_collection_modifyitems,
)
