"""Text (rich) and JSON views of plans, reports and status."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .plan import Action, Plan

if TYPE_CHECKING:  # verify (the kernel code) loads when a report is printed, not for validate
    from .verify import VerifyReport

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

STYLE = {"create": "green", "update": "yellow", "delete": "red"}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def plan_json(plan: Plan, topology: str) -> dict[str, Any]:
    return {"topology": topology, "changes": len(plan.actions), **plan.counts(),
            "actions": [a.to_json() for a in plan.actions]}


def print_plan(plan: Plan, topology: str) -> None:
    if plan.empty:
        console.print(f"topology {topology}: no changes")
        return
    for action in plan.actions:
        console.print(f"[{STYLE[action.op]}]{escape(action.describe())}[/]", markup=True)
    c = plan.counts()
    console.print(f"topology {topology}: {c['create']} to create, {c['update']} to change, "
                  f"{c['delete']} to delete")


def print_report(report: VerifyReport) -> None:
    from .verify import describe
    on = f" on host {report.host}" if report.host else ""
    table = Table(title=f"checks of topology {report.topology}{on}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("what")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for i, check in enumerate(report.checks, 1):
        result = "[green]ok[/]" if check.ok else "[dim]skipped[/]" if check.ok is None else "[red]FAIL[/]"
        table.add_row(str(i), check.kind, describe(check), result, check.detail)
    console.print(table)
    skipped = f", {report.skipped} skipped (they run on other machines)" if report.skipped else ""
    console.print(f"{report.passed} passed, {report.failed} failed{skipped}")


def print_status(items: list[Any]) -> None:
    """Plain lines, never a table: names must survive a narrow terminal or a pipe uncut."""
    if not items:
        console.print("no topologies applied")
        return
    for st in items:
        for line in status_lines(st.to_json()):
            console.print(line, markup=False, soft_wrap=True, overflow="ignore", crop=False)


def status_lines(data: dict[str, Any]) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["applied_at"])) if data["applied_at"] else "-"
    lines = [f"{data['name']}  applied {when}  state file: {'yes' if data['state_file'] else 'no'}"
             + (f"  manifest: {data['manifest']}" if data["manifest"] else "")
             + (f"  host: {data['host']}" if data.get("host") else "")]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(data["counts"].items()))
    lines.append(f"  resources: {counts or 'none'}")
    for node in data["by_node"]:
        name = f"node {node['node']}" if node["node"] else "node unknown (no state file)"
        where = "host namespace" if node["netns"] is None else f"netns {node['netns']}"
        lines.append(f"  {name}  {where}" + ("" if node["live"] else "  (missing)"))
        for link in node["interfaces"]:
            lines.append("    " + _interface_text(link))
        for route in node["routes"]:
            lines.append("    " + _route_text(route))
    return lines


def _interface_text(link: dict[str, Any]) -> str:
    parts = [link["ifname"]]
    if link["kind"]:
        parts += [link["kind"], "up" if link["up"] else "down", f"mtu {link['mtu']}"]
    if link["master"]:
        parts.append(f"master {link['master']}")
    peer = link["peer"]
    if peer:
        parts.append(f"peer {peer['ifname']}@{peer['netns'] or 'host'}" if peer["ifname"] else "peer unknown")
    return "  ".join(parts + list(link["addresses"]))


def _route_text(route: dict[str, Any]) -> str:
    parts = ["route"] + ([] if route["type"] == "unicast" else [route["type"]]) + [route["to"]]
    for key in ("via", "dev", "src"):
        if route[key]:
            parts += [key, str(route[key])]
    if route["table"] != 254:
        parts += ["table", str(route["table"])]
    if route["metric"]:
        parts += ["metric", str(route["metric"])]
    return " ".join(parts)


BAR_FROM = 40   # operations: a plan at least this long shows a bar on a terminal, not a line per operation


class ActionProgress:
    """What apply and destroy show while they work (text output; -o json shows nothing).

    Not a terminal (a pipe, a log, CI): one plain line per operation, as a script can read
    it. A terminal: the same lines for a short plan; for a long one (`expect` says how
    long) a rich progress bar naming the operation in hand. Rollback steps are always
    lines (above the bar): what was undone must stay on the screen."""

    def __init__(self, out: Console | None = None, bar_from: int = BAR_FROM) -> None:
        self.out = out or console
        self.bar_from = bar_from
        self._bar: Any = None
        self._task: Any = None

    def expect(self, total: int, verb: str = "applying") -> None:
        """The next `total` operations belong to one plan: show a bar when that is long."""
        self.close()
        if self.out.is_terminal and total >= self.bar_from:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            # The operation's text takes what the bar and the counts leave, cut short, never them.
            what = TextColumn("{task.fields[what]}", markup=False,
                              table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1))
            self._bar = Progress(TextColumn(escape(verb)), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TimeElapsedColumn(), what, console=self.out, redirect_stdout=False,
                                 redirect_stderr=False)
            self._task = self._bar.add_task(verb, total=total, what="")
            self._bar.start()

    def __call__(self, phase: str, action: Action) -> None:
        if self._bar is not None and phase == "apply":
            self._bar.update(self._task, advance=1, what=action.describe())
            return
        # What a rollback undoes is said as such: a "+" printed earlier no longer exists.
        prefix = "rollback: " if phase == "undo" else ""
        target = self._bar.console if self._bar is not None else self.out
        target.print(f"[{STYLE[action.op]}]{prefix}{escape(action.describe())}[/]")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, what="")
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ActionProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
