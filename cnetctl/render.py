"""Text (rich) and JSON views of plans, reports and status."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .plan import Plan
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
    table = Table(title=f"checks of topology {report.topology}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("check")
    table.add_column("what")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for i, check in enumerate(report.checks, 1):
        f = check.fields
        if check.kind == "ping":
            what = f"{f.get('from')} -> {f.get('to')}" + (f" (expect {f['expect']})" if f.get("expect") != "reachable"
                                                            else "")
        elif check.kind == "route":
            what = f"{f.get('node')}: to {f.get('to')}" + (f" from {f['from']}" if f.get("from") else "")
        elif check.kind == "readback":
            what = "declared = live"
        elif check.kind == "mesh":
            nodes = f.get("nodes")
            what = f"{'all nodes' if nodes == 'all' else ', '.join(nodes or [])} ({f.get('family')})"
        elif check.kind == "source":
            what = f"{f.get('from')} -> {f.get('to')} udp/{f.get('port')} (expect source {f.get('expect')})"
        else:
            what = ", ".join(f"{k}={v}" for k, v in f.items() if k in ("from", "to", "nodes", "family", "port"))
        table.add_row(str(i), check.kind, what, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    console.print(f"{report.passed} passed, {report.failed} failed")


def print_status(items: list[Any]) -> None:
    if not items:
        console.print("no topologies applied")
        return
    for st in items:
        data = st.to_json()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["applied_at"])) if data["applied_at"] else "-"
        console.print(f"[bold]{data['name']}[/]  applied {when}  state file: {'yes' if data['state_file'] else 'no'}"
                      + (f"  manifest: {data['manifest']}" if data["manifest"] else ""))
        counts = ", ".join(f"{v} {k}" for k, v in sorted(data["counts"].items()))
        console.print(f"  resources: {counts or 'none'}")
        table = Table(show_header=True, box=None, pad_edge=False)
        for col in ("netns", "interface", "kind", "master", "mtu", "state", "peer"):
            table.add_column(col)
        for link in data["links"]:
            peer = link["peer"]
            table.add_row(link["netns"] or "host", link["ifname"], link["kind"], link["master"] or "",
                          str(link["mtu"]), "up" if link["up"] else "down",
                          f"{peer['ifname']}@{peer['netns'] or 'host'}" if peer else "")
        if data["namespaces"]:
            console.print("  namespaces: " + ", ".join(data["namespaces"]))
        if data["links"]:
            console.print(table)
