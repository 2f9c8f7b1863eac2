"""cnetctl.testing: a pytest plugin that runs each test's network in a throw-away world.

Installed with cnetctl, pytest loads it by itself (the `pytest11` entry point `cnetctl.testing`;
`-p no:cnetctl.testing` turns it off). What it gives a test:

- `cnetctl_world`: an empty world of its own (kernel/world.py: network, mount and PID
  namespaces, a private /run/netns and a state dir). `cnetctl_world.run(...)` and `.popen(...)`
  run commands inside; `Lab.apply(cnetctl_world, "lab.yaml")` applies a manifest there.
- `cnetctl_lab`: a world with one manifest applied and its checks passed, the manifest named by
  `@pytest.mark.cnetctl_manifest("lab.yaml")` (or `parametrize("cnetctl_lab", [...], indirect=True)`).
- `lab_fixture("lab.yaml", scope="module")`: the same as a fixture of your own, for a whole
  module (or class, or session).

A `Lab` runs commands in its nodes (`exec`, `popen`, `ping`, `ip`) and re-runs the checks
(`verify`). After the test, passed or failed, every topology in the world is destroyed with
`cnetctl destroy` (a failure there is reported as an error of the test) and the world is ended:
every process started in it is killed and everything made in it is gone. The pytest process
itself never leaves the namespaces it started in. See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .kernel.world import Lab, LabError, World, WorldError

MARKER = "cnetctl_manifest"
Manifest = str | Path | Mapping[str, Any]

__all__ = ["MARKER", "Lab", "LabError", "World", "WorldError", "apply_manifest", "lab_fixture", "world_for"]
_LAZY = ("Lab", "LabError", "World", "WorldError")


def __getattr__(name: str) -> Any:
    """`from cnetctl.testing import Lab, World`, imported when asked for: the plugin itself loads in
    every pytest session of a venv with cnetctl, and the kernel modules take a while to import."""
    if name in _LAZY:
        from .kernel import world
        return getattr(world, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("cnetctl").addoption(
        "--cnetctl-require-world", action="store_true", default=False,
        help="fail, instead of skip, the tests that need a throw-away world where none can be made "
             "(not root, unshare/nsenter/ip missing)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(manifest, verify=True): the manifest the cnetctl_lab fixture "
                                       "applies in a throw-away world (a path, relative to the test file)")


@contextmanager
def world_for(config: pytest.Config) -> Iterator[World]:
    """A world for one fixture: skipped (or failed, with --cnetctl-require-world) where none can be
    made; on the way out, every topology in it destroyed, then the world ended, whatever happened."""
    from .kernel.world import World, WorldError, destroy_all, why_not

    problem = why_not()
    if problem:
        if config.getoption("cnetctl_require_world", default=False):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    try:
        world = World()
    except WorldError as err:
        problem = str(err)
        world = None
    if world is None:
        pytest.fail(problem or "", pytrace=False)
    problems: list[str] = []
    try:
        yield world
    finally:
        try:
            problems = destroy_all(world) if world.alive else []
        finally:
            world.close()
    if problems:
        pytest.fail("cleaning up the throw-away world:\n" + "\n".join(problems), pytrace=False)


def _resolve(request: pytest.FixtureRequest, manifest: Manifest) -> Path | Mapping[str, Any]:
    """A relative path is looked up next to the test file, then in pytest's rootdir."""
    if isinstance(manifest, Mapping):
        return manifest
    path = Path(manifest)
    if path.is_absolute():
        return path
    tried = [Path(request.path).parent / path, request.config.rootpath / path]
    for candidate in tried:
        if candidate.exists():
            return candidate
    pytest.fail(f"manifest {manifest} not found (looked in {', '.join(str(t.parent) for t in tried)})",
                pytrace=False)


def apply_manifest(world: World, request: pytest.FixtureRequest, manifest: Manifest, verify: bool = True) -> Lab:
    """Lab.apply, a failure said as a failed fixture (cnetctl's own words, no traceback)."""
    from .kernel.world import Lab, LabError

    try:
        return Lab.apply(world, _resolve(request, manifest), verify=verify)
    except LabError as err:
        problem = str(err)
    pytest.fail(problem, pytrace=False)   # outside the except: no "during handling of …" chain


@pytest.fixture
def cnetctl_world(request: pytest.FixtureRequest) -> Iterator[World]:
    """An empty throw-away world for this test."""
    with world_for(request.config) as world:
        yield world


@pytest.fixture
def cnetctl_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The manifest of @pytest.mark.cnetctl_manifest (or of an indirect parameter), applied and
    verified in a world of this test's own."""
    param = getattr(request, "param", None)
    marker = request.node.get_closest_marker(MARKER)
    if param is not None:
        manifest, verify = param, True
    elif marker is not None and marker.args:
        manifest, verify = marker.args[0], bool(marker.kwargs.get("verify", True))
    else:
        pytest.fail(f"cnetctl_lab needs @pytest.mark.{MARKER}('lab.yaml') on the test (or an indirect "
                    "parameter)", pytrace=False)
    with world_for(request.config) as world:
        yield apply_manifest(world, request, manifest, verify)


def lab_fixture(manifest: Manifest, *, scope: str = "module", verify: bool = True,
                name: str | None = None) -> Any:
    """A fixture of your own: `lab = lab_fixture("lab.yaml")` at module level gives every test of the
    module that asks for `lab` the same topology, applied once in one world, ended after the last."""

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload]
    def _lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
        with world_for(request.config) as world:
            yield apply_manifest(world, request, manifest, verify)

    return _lab
