"""The plan runner and the names around it (issue 9): a per-step hook instead of test code in
the production loop, the fault-injection hook the CLI installs from the environment, the
owner-label helpers. No root: the kernel is a recording stand-in."""

from __future__ import annotations

import pytest

from cnetctl import RTPROT_CNETCTL, owner_label, owner_of
from cnetctl.errors import KernelError, NotPermitted
from cnetctl.faults import FAULT_ENV, KILL_ENV, PAUSE_ENV, InjectedFault, hook_from_env
from cnetctl.model.resources import Netns, Sysctl
from cnetctl.plan import Action, Plan
from cnetctl.runner import execute


class Recorder:
    """Stands in for Kernel: notes what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def create(self, res: object) -> None:
        self.calls.append(("create", str(res)))

    def delete(self, res: object) -> None:
        self.calls.append(("delete", str(res)))

    def update(self, old: object, new: object) -> None:
        self.calls.append(("update", str(new)))


PLAN = Plan([Action("create", Netns("a")), Action("create", Netns("b")), Action("create", Sysctl("b", "k", "1"))])


def test_the_hook_runs_before_each_step_and_a_failure_rolls_back():
    kernel, seen = Recorder(), []

    def hook(i: int, action: Action) -> None:
        seen.append((i, action.resource, len(kernel.calls)))
        if i == 3:
            raise KernelError("refused")

    with pytest.raises(KernelError, match="rolled back: the 2 change"):
        execute(kernel, PLAN, before_step=hook)  # type: ignore[arg-type]
    assert seen == [(1, Netns("a"), 0), (2, Netns("b"), 1), (3, Sysctl("b", "k", "1"), 2)]
    assert kernel.calls == [("create", str(Netns("a"))), ("create", str(Netns("b"))),
                            ("delete", str(Netns("b"))), ("delete", str(Netns("a")))]


def test_without_a_hook_the_plan_just_runs():
    kernel = Recorder()
    assert execute(kernel, PLAN) == PLAN.actions  # type: ignore[arg-type]
    assert len(kernel.calls) == 3


def test_no_fault_variable_no_hook():
    assert hook_from_env({}) is None
    assert hook_from_env({"CNETCTL_STATE_DIR": "/x"}) is None


@pytest.mark.parametrize("name", [FAULT_ENV, KILL_ENV, PAUSE_ENV])
def test_each_fault_variable_installs_the_hook(name):
    assert callable(hook_from_env({name: "7"}))


def test_the_fault_hook_fails_the_nth_step_as_the_kernel_would():
    hook = hook_from_env({FAULT_ENV: "2", KILL_ENV: "junk"})
    assert hook is not None
    hook(1, PLAN.actions[0])
    with pytest.raises(InjectedFault, match=r"create netns b: injected fault \(CNETCTL_FAULT_AT=2\)"):
        hook(2, PLAN.actions[1])
    assert issubclass(InjectedFault, KernelError)  # rolled back like a kernel error, exit 3
    kernel = Recorder()
    with pytest.raises(InjectedFault):
        execute(kernel, PLAN, before_step=hook)  # type: ignore[arg-type]
    assert kernel.calls == [("create", str(Netns("a"))), ("delete", str(Netns("a")))]


def test_owner_label_and_owner_of_are_inverses():
    assert owner_of(owner_label("lab")) == "lab"
    assert owner_of("cnetctl:") == ""
    for label in (None, "", "lab", "xcnetctl:lab", "CNETCTL:lab"):
        assert owner_of(label) is None


def test_names_that_say_what_they_are():
    assert RTPROT_CNETCTL == 147
    assert NotPermitted("x").exit_code == 4
