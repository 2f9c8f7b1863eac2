"""Bad input: every tests/corpus/bad/*.yaml fails `cnetctl validate` with exit 2 and
exactly the stderr of its golden NNN-name.err; never a traceback, nothing on stdout.

    CNETCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_corpus.py      rewrite the goldens (review the diff!)
    CNETCTL_CORPUS_SUBPROCESS=all pytest tests/unit/test_corpus.py  every file through `python -m cnetctl`

By default each corpus file runs through cnetctl's real entry point (the function
`python -m cnetctl` calls) in a process forked from tests/forkserver.py, with its own
stdout, stderr and exit code: the same result without paying ~0.3 s of interpreter start
and imports per file. A sample of the corpus, the valid manifests and the file-level cases
(directory, unreadable, missing, huge, non-UTF-8) always run as real
`python -m cnetctl validate` subprocesses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import unprivileged_prefix
from tests.forkserver import cnetctl_call

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus" / "bad"
CASES = sorted(CORPUS.glob("*.yaml"))
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
UPDATE = os.environ.get("CNETCTL_UPDATE_GOLDEN") == "1"
ALL_SUBPROCESS = os.environ.get("CNETCTL_CORPUS_SUBPROCESS") == "all"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env.update(NO_COLOR="1", TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_subprocess(*args: str, prefix: tuple[str, ...] = ()) -> Result:
    """`python -m cnetctl ARGS` from the worktree root, exactly as a user runs it."""
    p = subprocess.run([*prefix, sys.executable, "-m", "cnetctl", *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    return Result(p.returncode, p.stdout, p.stderr)


def run_forked(*args: str) -> Result:
    """cnetctl's real entry point with argv ARGS in a process forked from tests/forkserver.py."""
    p = cnetctl_call(list(args), _env(), ROOT)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_invalid(res: Result, file: str) -> None:
    """Exit 2, nothing on stdout, no traceback, every stderr line FILE[:LINE]: message."""
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert res.stdout == ""
    assert res.rc == 2, res.stderr
    assert res.stderr.endswith("\n")
    for line in res.stderr.splitlines():
        assert re.match(rf"^{re.escape(file)}(:\d+)?: \S", line), line


def golden(case: Path) -> Path:
    return case.with_suffix(".err")


def compare(res: Result, case: Path) -> None:
    rel = case.relative_to(ROOT).as_posix()
    assert_invalid(res, rel)
    if UPDATE:
        golden(case).write_text(res.stderr)
    assert golden(case).exists(), f"no golden {golden(case).name}: run with CNETCTL_UPDATE_GOLDEN=1 and review it"
    assert res.stderr == golden(case).read_text()


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 100
    names = [c.name for c in CASES]
    assert all(re.match(r"^\d{3}-[a-z0-9-]+\.yaml$", n) for n in names), names
    numbers = [n[:3] for n in names]
    assert len(set(numbers)) == len(numbers), "two corpus files share a number"
    orphans = {g.stem for g in CORPUS.glob("*.err")} - {c.stem for c in CASES}
    assert not orphans, f"goldens without a manifest: {sorted(orphans)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.stem)
def test_bad_manifest(case: Path) -> None:
    rel = case.relative_to(ROOT).as_posix()
    compare((run_subprocess if ALL_SUBPROCESS else run_forked)("validate", rel), case)


# A spread of the corpus through the real `python -m cnetctl`: the forked runner above
# must not be what makes the goldens match.
SAMPLE = CASES[::20] + CASES[-1:]


@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: c.stem)
def test_bad_manifest_real_subprocess(case: Path) -> None:
    if UPDATE:
        pytest.skip("goldens are being rewritten")
    compare(run_subprocess("validate", case.relative_to(ROOT).as_posix()), case)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.stem)
def test_valid_manifest(manifest: Path) -> None:
    res = run_subprocess("validate", manifest.relative_to(ROOT).as_posix())
    assert "Traceback" not in res.stdout + res.stderr
    assert (res.rc, res.stderr) == (0, ""), res.stderr
    assert "is valid" in res.stdout


# --- whole-file problems, made by the test rather than stored ---------------------------------

@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory under /tmp that any user may enter (pytest's tmp_path is 0700, root's)."""
    d = Path(tempfile.mkdtemp(prefix="cnetctl-corpus-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def expect_one_line(res: Result, file: str, message: str) -> None:
    assert_invalid(res, file)
    assert res.stderr == f"{file}: {message}\n"


def test_directory(scratch: Path) -> None:
    expect_one_line(run_subprocess("validate", str(scratch)), str(scratch), "is a directory, expected a YAML manifest")


def test_missing_file(scratch: Path) -> None:
    path = str(scratch / "nope.yaml")
    expect_one_line(run_subprocess("validate", path), path, "no such file")


def test_huge_file(scratch: Path) -> None:
    path = scratch / "huge.yaml"
    with open(path, "w") as fh:
        fh.write("apiVersion: cnetctl/v1\nname: huge\nnodes: {}\n")
        fh.write("#" * MAX_MANIFEST_BYTES + "\n")
    size = path.stat().st_size
    expect_one_line(run_subprocess("validate", str(path)), str(path),
                    f"file is {size} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")


def test_endless_device() -> None:
    expect_one_line(run_subprocess("validate", "/dev/zero"), "/dev/zero",
                    f"more than {MAX_MANIFEST_BYTES} bytes; manifests are limited to {MAX_MANIFEST_BYTES} bytes")


def test_not_utf8(scratch: Path) -> None:
    path = scratch / "latin1.yaml"
    path.write_bytes(b"apiVersion: cnetctl/v1\n# caf\xe9 au lait\nname: x\nnodes: {}\n")
    res = run_subprocess("validate", str(path))
    assert_invalid(res, str(path))
    assert res.stderr == f"{path}:2: not UTF-8 text: byte 0xe9 at line 2, column 6 (save the file as UTF-8)\n"


def _as_nobody() -> tuple[str, ...]:
    """A command prefix running without root's powers (root reads any file, whatever its mode)."""
    return unprivileged_prefix()


def test_unreadable_file(scratch: Path) -> None:
    prefix = _as_nobody()
    path = scratch / "secret.yaml"
    path.write_text("apiVersion: cnetctl/v1\nname: secret\nnodes: {}\n")
    path.chmod(0)
    expect_one_line(run_subprocess("validate", str(path), prefix=prefix), str(path),
                    "permission denied (cannot read the file)")
