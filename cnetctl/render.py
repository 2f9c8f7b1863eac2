"""Text (rich) and JSON views of plans, reports and status."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .plan import Plan

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
    table = Table(title=f"checks of topology {report.topology}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("what")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for i, check in enumerate(report.checks, 1):
        table.add_row(str(i), check.kind, describe(check), "[green]ok[/]" if check.ok else "[red]FAIL[/]",
                      check.detail)
    console.print(table)
    console.print(f"{report.passed} passed, {report.failed} failed")


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
             + (f"  manifest: {data['manifest']}" if data["manifest"] else "")]
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
