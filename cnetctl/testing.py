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
- A manifest with `hosts:` gets a world per machine (kernel/world.machines: joined by an underlay
  with each machine's address), each machine's slice applied in its own; `machines_for` makes such
  worlds for a test that applies its own topologies across them.

A `Lab` runs commands in its nodes (`exec`, `popen`, `ping`, `ip`) and re-runs the checks
(`verify`). After the test, passed or failed, every topology in the world is destroyed with
`cnetctl destroy` (a failure there is reported as an error of the test) and the world is ended:
every process started in it is killed and everything made in it is gone. The pytest process
itself never leaves the namespaces it started in. See docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .kernel.world import Lab, LabError, World, WorldError

MARKER = "cnetctl_manifest"
Manifest = str | Path | Mapping[str, Any]

__all__ = ["MARKER", "Lab", "LabError", "World", "WorldError", "apply_manifest", "lab_fixture", "machines_for",
           "world_for"]
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
    with machines_for(config, {}) as worlds:
        yield worlds[None]


@contextmanager
def machines_for(config: pytest.Config, addresses: Mapping[str, str]) -> Iterator[dict[str | None, World]]:
    """A world per machine (name -> its underlay address), joined by an underlay as
    kernel/world.machines makes it; no addresses: one world, as {None: world}. Skipped or failed
    as world_for; on the way out, every topology in every world destroyed, then the worlds ended."""
    from .kernel.world import TOOLS, WorldError, destroy_all, why_not, worlds_for

    problem = why_not()
    if problem:
        if config.getoption("cnetctl_require_world", default=False):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    with ExitStack() as stack:
        try:
            worlds = stack.enter_context(worlds_for(addresses, TOOLS))
        except WorldError as err:
            problem, worlds = str(err), None
        if worlds is None:
            pytest.fail(problem or "", pytrace=False)
        problems: list[str] = []
        try:
            yield worlds
        finally:
            for machine, world in worlds.items():   # the worlds end after this, whatever happened
                left = destroy_all(world) if world.alive else []
                problems += [f"{p} (on {machine})" if machine else p for p in left]
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


def apply_manifest(worlds: World | Mapping[str | None, World], request: pytest.FixtureRequest, manifest: Manifest,
                   verify: bool = True) -> Lab:
    """Lab.apply (in a world, or in machines_for's world per machine), a failure said as a failed
    fixture (cnetctl's own words, no traceback)."""
    from .kernel.world import Lab, LabError

    try:
        return Lab.apply(worlds, _resolve(request, manifest), verify=verify)
    except LabError as err:
        problem = str(err)
    pytest.fail(problem, pytrace=False)   # outside the except: no "during handling of …" chain


@contextmanager
def _lab(request: pytest.FixtureRequest, manifest: Manifest, verify: bool) -> Iterator[Lab]:
    """The manifest applied in worlds of its own: one, or one per machine of its `hosts:`."""
    from .kernel.world import manifest_hosts

    with machines_for(request.config, manifest_hosts(_resolve(request, manifest))) as worlds:
        yield apply_manifest(worlds, request, manifest, verify)


@pytest.fixture
def cnetctl_world(request: pytest.FixtureRequest) -> Iterator[World]:
    """An empty throw-away world for this test."""
    with world_for(request.config) as world:
        yield world


@pytest.fixture
def cnetctl_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The manifest of @pytest.mark.cnetctl_manifest (or of an indirect parameter), applied and
    verified in a world of this test's own (a world per machine, for a manifest with hosts:)."""
    param = getattr(request, "param", None)
    marker = request.node.get_closest_marker(MARKER)
    if param is not None:
        manifest, verify = param, True
    elif marker is not None and marker.args:
        manifest, verify = marker.args[0], bool(marker.kwargs.get("verify", True))
    else:
        pytest.fail(f"cnetctl_lab needs @pytest.mark.{MARKER}('lab.yaml') on the test (or an indirect "
                    "parameter)", pytrace=False)
    with _lab(request, manifest, verify) as lab:
        yield lab


def lab_fixture(manifest: Manifest, *, scope: str = "module", verify: bool = True,
                name: str | None = None) -> Any:
    """A fixture of your own: `lab = lab_fixture("lab.yaml")` at module level gives every test of the
    module that asks for `lab` the same topology, applied once in one world (or a world per machine),
    ended after the last."""

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload]
    def _lab_fixture(request: pytest.FixtureRequest) -> Iterator[Lab]:
        with _lab(request, manifest, verify) as lab:
            yield lab

    return _lab_fixture
