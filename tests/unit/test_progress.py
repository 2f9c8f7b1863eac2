"""What apply/destroy show while they work: lines when not a terminal, a bar on a terminal for long plans."""

from __future__ import annotations

import io
import re

from rich.console import Console

from cnetctl.model.resources import Netns
from cnetctl.plan import Action
from cnetctl.render import BAR_FROM, ActionProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def shown(terminal: bool, count: int, undo: int = 0) -> str:
    buf = io.StringIO()
    out = Console(file=buf, force_terminal=terminal, width=120, highlight=False, soft_wrap=True)
    actions = [Action("create", Netns(f"lab-pod{i}")) for i in range(count)]
    with ActionProgress(out) as progress:
        progress.expect(count, "applying")
        for action in actions:
            progress("apply", action)
        for action in reversed(actions[len(actions) - undo:]):
            progress("undo", action.inverse())
    return ANSI.sub("", buf.getvalue()).replace("\r", "\n")


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_not_a_terminal_one_plain_line_per_operation():
    text = shown(False, BAR_FROM + 10)
    assert lines_of(text) == [f"+ netns lab-pod{i}" for i in range(BAR_FROM + 10)]
    assert "\x1b" not in text and "━" not in text


def test_a_terminal_and_a_short_plan_lines_as_well():
    assert lines_of(shown(True, BAR_FROM - 1)) == [f"+ netns lab-pod{i}" for i in range(BAR_FROM - 1)]


def test_a_terminal_and_a_long_plan_a_bar_instead_of_lines():
    n = BAR_FROM + 10
    text = shown(True, n)
    assert f"{n}/{n}" in text and "━" in text and "applying" in text
    assert not [line for line in lines_of(text) if line.startswith("+ netns")], text


def test_rollback_steps_stay_on_the_screen_above_the_bar():
    n = BAR_FROM + 2
    text = shown(True, n, undo=3)
    assert [line for line in lines_of(text) if line.startswith("rollback:")] == \
        [f"rollback: - netns lab-pod{i}" for i in (n - 1, n - 2, n - 3)]
