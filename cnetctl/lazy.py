"""Names bound now, imported at first use.

`cnetctl --help`, `validate` and `schema` need neither pyroute2 nor the kernel, plan
and verify code nor rich's table renderer; importing them all up front cost more than
the commands themselves (0.6-0.9 s against a target of 0.3 s). The CLI binds those
names to these stand-ins, which import the real object the first time it is used.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module, imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._lazy_name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name}>"


class LazyAttr:
    """An attribute of a module (a function, a console, a dict): called, read or indexed, it is
    looked up in the imported module each time, so a test that patches the module is obeyed."""

    def __init__(self, module: str, attr: str) -> None:
        self._lazy_module, self._lazy_attr = module, attr

    def _target(self) -> Any:
        return getattr(importlib.import_module(self._lazy_module), self._lazy_attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target(), attr)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._target()

    def __iter__(self) -> Any:
        return iter(self._target())

    def __repr__(self) -> str:
        return f"<lazy {self._lazy_module}.{self._lazy_attr}>"


def lazy_attrs(module: str, *names: str) -> tuple[LazyAttr, ...]:
    """LazyAttr(module, name) for each name, in order."""
    return tuple(LazyAttr(module, name) for name in names)
