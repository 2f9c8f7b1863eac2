"""The command line: options, rendering, exit codes. The only place that catches exceptions."""

from __future__ import annotations

import contextlib
import enum
import re
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from . import DEFAULT_STATE_DIR, __version__
from .errors import CnetctlError, TopologyError, UsageError

if TYPE_CHECKING:
    from . import api
    from .faults import hook_from_env
    from .render import (
        ActionProgress,
        console,
        err_console,
        plan_json,
        print_json,
        print_plan,
        print_report,
        print_status,
    )
else:
    # Imported at first use (cnetctl/lazy.py): --help, validate and schema start without
    # pyroute2, the kernel/plan/verify code and rich's renderers.
    from .lazy import LazyAttr, LazyModule

    api = LazyModule("cnetctl.api")
    hook_from_env = LazyAttr("cnetctl.faults", "hook_from_env")
    ActionProgress, console, err_console, plan_json, print_json, print_plan, print_report, print_status = (
        LazyAttr("cnetctl.render", name) for name in ("ActionProgress", "console", "err_console", "plan_json",
                                                      "print_json", "print_plan", "print_report", "print_status"))


def _flags_take_no_value(params: list[Any]) -> list[Any]:
    """--help shows no value and no default for a boolean flag (typer shows `<bool>` or
    `[default: False]`, depending on its version): it takes none."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
            param.show_default = False  # type: ignore[attr-defined]
    return params


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_take_no_value(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    name="cnetctl",
    help="Declarative container networks on the real Linux kernel: network namespaces, veth pairs, bridges, "
         "addresses, routes, policy rules, sysctls and NAT from one YAML file, proven with real packets.\n\n"
         "Exit codes: 0 ok, 1 checks failed or drift, 2 invalid input, 3 kernel operation failed (rolled back), "
         "4 not root, 5 topology locked.",
    no_args_is_help=True,
    add_completion=True,   # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(**kwargs: Any) -> Any:
    return app.command(cls=_Command, **kwargs)


class Output(str, enum.Enum):  # not enum.StrEnum: that is Python 3.11+
    text = "text"
    json = "json"


class Opts:
    state_dir: str | None = None


OutputOpt = Annotated[Output, typer.Option("-o", "--output", help="text (tables) or json")]
FileArg = Annotated[str, typer.Argument(help="the topology manifest (YAML, apiVersion cnetctl/v1)",
                                        show_default=False)]


class Backend(str, enum.Enum):
    auto = "auto"
    nftables = "nftables"
    iptables = "iptables"


BackendOpt = Annotated[Backend | None, typer.Option(
    "--nat-backend", help="override settings.nat_backend: auto (what the host's iptables uses), nftables, iptables",
    show_default=False)]


def _backend(value: Backend | None) -> str | None:
    return value.value if value else None


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        err_console.print(f"warning: {w}", markup=False)


LockOpt = Annotated[float, typer.Option("--lock-timeout", help="seconds to wait for another cnetctl working on "
                                        "the same topology", min=0)]


HostOpt = Annotated[str | None, typer.Option(
    "--host", metavar="NAME", help="with hosts: in the manifest, the machine whose slice to work on (default: the "
    "host whose address is configured here)", show_default=False)]


def _version(value: bool) -> None:
    if value:
        console.print(f"cnetctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    # A real default (not text in the help, where rich markup took "[default: …]" for a tag).
    state_dir: Annotated[str, typer.Option("--state-dir", envvar="CNETCTL_STATE_DIR", metavar="DIR",
                                           help="where state files and locks live")] = DEFAULT_STATE_DIR,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    Opts.state_dir = state_dir


def _progress(output: Output) -> ActionProgress | None:
    """Lines, or a bar on a terminal for a long plan (render.ActionProgress); nothing with -o json."""
    if output is Output.json:
        return None
    from . import render  # the real console: rich enters it as a context manager

    return render.ActionProgress(render.console)


@command()
def validate(file: FileArg, output: OutputOpt = Output.text) -> None:
    """Check a manifest (schema and cross-checks) without touching the kernel; needs no root."""
    try:
        desired = api.validate(file)
    except TopologyError as err:
        if output is Output.json:  # the errors go to stderr as well (main), as in text mode
            print_json({"valid": False, "topology": _declared_name(file, err),
                        "errors": [{"file": err.file, "line": p.line, "path": p.path, "message": p.message}
                                   for p in err.problems]})
        raise
    if output is Output.json:
        print_json({"valid": True, "topology": desired.name, "nodes": desired.nodes,
                    "resources": len(desired.resources), "checks": len(desired.topology.checks)})
    else:
        console.print(f"{file}: topology {desired.name} is valid ({len(desired.nodes)} nodes, "
                      f"{len(desired.resources)} kernel resources, {len(desired.topology.checks)} checks)")


def _declared_name(file: str, err: TopologyError) -> str | None:
    """The topology name an invalid manifest declares, when that much of it is sound."""
    if any(p.path == "name" for p in err.problems):
        return None
    from .load import parse_yaml, read_manifest_text
    from .model.topology import TOPOLOGY_NAME_RE
    try:
        data = parse_yaml(read_manifest_text(file), file).data
    except CnetctlError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and re.fullmatch(TOPOLOGY_NAME_RE, name) else None


@command()
def schema() -> None:
    """Print the JSON Schema of the manifest (with field descriptions; docs/cnetctl.schema.json is this)."""
    from .model.fielddocs import json_schema
    print_json(json_schema())


@command()
def plan(file: FileArg, output: OutputOpt = Output.text, nat_backend: BackendOpt = None,
         host: HostOpt = None) -> None:
    """Show what apply would create (+), change (~) and delete (-), touching nothing."""
    desired, the_plan = api.plan_file(file, Opts.state_dir, _backend(nat_backend), host)
    _warn(desired.warnings)
    if output is Output.json:
        print_json(plan_json(the_plan, desired.name))
    else:
        print_plan(the_plan, desired.name)


@command()
def apply(file: FileArg, output: OutputOpt = Output.text,
          no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the checks after applying")] = False,
          lock_timeout: LockOpt = 30.0, nat_backend: BackendOpt = None, host: HostOpt = None) -> None:
    """Reconcile the kernel with the manifest, then run its checks.

    Creates what is missing, corrects what drifted, removes what the topology owns
    that the file no longer declares. On a kernel error everything this run did is
    rolled back (exit 3)."""

    progress = _progress(output)

    def announce(name, p, warnings):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if output is Output.text:
            if p.empty:
                console.print(f"topology {name}: no changes")
            else:
                c = p.counts()
                console.print(f"topology {name}: applying {c['create']} to create, {c['update']} to change, "
                              f"{c['delete']} to delete")
        if progress:
            progress.expect(len(p.actions), "applying")

    result: api.ApplyResult | None = None

    def what_stands() -> str:   # api.apply says it for a signal inside it; this, for one after it
        return api.changes_stand(len(result.plan.actions) if result else 0, checks_pending=False)

    with api.interrupted_says(what_stands):
        with progress or contextlib.nullcontext():
            result = api.apply(file, Opts.state_dir, verify=not no_verify, lock_timeout=lock_timeout,
                               progress=progress, on_plan=announce, nat_backend=_backend(nat_backend),
                               before_step=hook_from_env(), host=host)
        if output is Output.json:
            data = {"topology": result.topology, "plan": plan_json(result.plan, result.topology),
                    "warnings": result.warnings, "verify": result.report.to_json() if result.report else None}
            print_json(data)
        elif result.report:
            print_report(result.report)
    if result.report and not result.report.ok:
        raise typer.Exit(1)


@command()
def verify(file: FileArg, output: OutputOpt = Output.text, nat_backend: BackendOpt = None,
           host: HostOpt = None) -> None:
    """Run the manifest's checks (real pings, kernel route lookups) and the read-back against what is live."""
    report = api.verify(file, Opts.state_dir, _backend(nat_backend), host)
    if output is Output.json:
        print_json(report.to_json())
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)


@command()
def destroy(file: Annotated[str | None, typer.Argument(help="a manifest naming the topology", show_default=False)]
            = None,
            name: Annotated[str | None, typer.Option("--name", help="the topology name (no file needed)")] = None,
            output: OutputOpt = Output.text, lock_timeout: LockOpt = 30.0, host: HostOpt = None,
            all_: Annotated[bool, typer.Option("--all", help="every topology cnetctl owns on this machine (found "
                                               "by state files, ownership labels and rule comments)")] = False,
            ) -> None:
    """Remove everything a topology owns; idempotent, works without the file or the state file."""
    if all_:
        if file is not None or name is not None:
            raise UsageError("give either FILE, --name NAME or --all")
        _destroy_all(output, lock_timeout)
        return
    if (file is None) == (name is None):
        raise UsageError("give either FILE, --name NAME or --all")
    if name is None:
        assert file is not None
        name = api.name_of(file, host)
    import re

    from .model.topology import TOPOLOGY_NAME_RE
    if not re.match(TOPOLOGY_NAME_RE, name):
        raise UsageError(f"invalid topology name {name!r}")

    progress = _progress(output)

    def announce(p, warnings):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if output is Output.text and p.empty:
            console.print(f"topology {name}: nothing to destroy")
        if progress:
            progress.expect(len(p.actions), "destroying")

    with progress or contextlib.nullcontext():
        the_plan = api.destroy(name, Opts.state_dir, lock_timeout=lock_timeout, progress=progress,
                               on_plan=announce, before_step=hook_from_env(), host=host)
    if output is Output.json:
        print_json({"topology": name, "destroyed": plan_json(the_plan, name)})
    elif not the_plan.empty:
        console.print(f"topology {name}: destroyed ({len(the_plan.actions)} operations)")


@command()
def status(name: Annotated[str | None, typer.Argument(help="one topology, by name or manifest (default: all)",
                                                     show_default=False)]
           = None, output: OutputOpt = Output.text, host: HostOpt = None) -> None:
    """List applied topologies and their namespaces and links, read from the kernel."""
    if name is not None and ("/" in name or name.endswith((".yaml", ".yml"))):
        name = api.name_of(name, host)   # a manifest: its topology
    items = api.status(name, Opts.state_dir, host)
    if output is Output.json:
        print_json({"topologies": [i.to_json() for i in items]})
    else:
        print_status(items)


@command()
def inventory(file: FileArg) -> None:
    """Print an Ansible inventory (YAML) of the manifest's hosts: group `cnetctl`, each host at its
    address (ansible_host) with its name in `cnetctl_host`, for `cnetctl apply FILE --host {{ cnetctl_host }}`."""
    sys.stdout.write(api.inventory(file))


@command(name="exec", context_settings={"allow_interspersed_args": False})
def exec_(name: Annotated[str, typer.Argument(help="topology name")],
          node: Annotated[str, typer.Argument(help="node name (host = where cnetctl runs)")],
          command: Annotated[list[str], typer.Argument(help="the command, after --", show_default=False)]) -> None:
    """Run a command inside a node's network namespace: cnetctl exec lab ns1 -- ip addr."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("give the command after --, e.g. cnetctl exec lab ns1 -- ip addr")
    api.exec_in_node(name, node, command, Opts.state_dir)


@command()
def explain(name: Annotated[str, typer.Argument(help="topology name")],
            node: Annotated[str, typer.Argument(help="node name (host = where cnetctl runs)")],
            to: Annotated[str, typer.Option("--to", help="destination address", show_default=False)],
            from_: Annotated[str | None, typer.Option("--from", help="source address")] = None,
            iif: Annotated[str | None, typer.Option("--iif", help="the packet arrives on this interface "
                                                       "(default: generated on the node)")] = None,
            fwmark: Annotated[str | None, typer.Option("--fwmark", help="packet mark, e.g. 0x10")] = None,
            output: OutputOpt = Output.text) -> None:
    """The path of one packet through a node: policy rules in order and which matched, the table, the route,
    the verdict and the netfilter hooks; checked against the kernel's own route lookup (exit 1 on a mismatch)."""
    from .explain import render_text
    mark = None
    if fwmark is not None:
        try:
            mark = int(fwmark, 0)
        except ValueError:
            raise UsageError(f"invalid --fwmark {fwmark!r}: expected a number such as 0x10") from None
    expl = api.explain(name, node, to, src=from_, iif=iif, fwmark=mark, directory=Opts.state_dir)
    if output is Output.json:
        print_json(expl.to_json())
    else:
        for line in render_text(expl):
            console.print(line, markup=False)
    if not expl.agrees:
        raise typer.Exit(1)


# --- destroy --all (issue 12) ----------------------------------------------------------------------
def _destroy_all(output: Output, lock_timeout: float) -> None:
    progress = _progress(output)

    def announce(name, p, warnings):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if progress:
            progress.expect(len(p.actions), f"destroying {name}")

    def done(name, p):  # type: ignore[no-untyped-def]
        if progress:
            progress.close()
        if output is Output.text:
            what = f"destroyed ({len(p.actions)} operations)" if not p.empty else "nothing left to destroy"
            console.print(f"topology {name}: {what}", markup=False)

    with progress or contextlib.nullcontext():
        plans = api.destroy_all(Opts.state_dir, lock_timeout=lock_timeout, progress=progress,
                                on_plan=announce, on_done=done)
    if output is Output.json:
        print_json({"topologies": [{"topology": n, "destroyed": plan_json(p, n)} for n, p in plans.items()]})
    elif not plans:
        console.print("no topologies to destroy: cnetctl owns nothing on this machine")


# --- generate (issue 12): manifests made by program, printed ready to apply ------------------------
generate_app = typer.Typer(cls=_Group, no_args_is_help=True,
                           help="Print a ready-to-apply manifest (with checks) to stdout: "
                                "cnetctl generate k8s --nodes 2 --pods-per-node 2 > k8s.yaml")
app.add_typer(generate_app, name="generate")


class K8sMode(str, enum.Enum):
    host_gw = "host-gw"
    vxlan = "vxlan"


GenNameOpt = Annotated[str | None, typer.Option("--name", help="topology name (1-16: a-z, 0-9, '-')",
                                                show_default=False)]


def _print_generated(doc: dict[str, Any], argv: list[str]) -> None:
    from .generate import to_yaml
    how = ("on each machine (edit hosts: to their addresses): sudo cnetctl apply FILE --host NAME"
           if "hosts" in doc else "apply: sudo cnetctl apply FILE   (without touching the host: sudo cnetctl try FILE)")
    sys.stdout.write(to_yaml(doc, comment=f"made by: cnetctl generate {' '.join(argv)}\n{how}"))


@generate_app.command("bridge", cls=_Command)
def generate_bridge(pods: Annotated[int, typer.Option("--pods", help="how many pods (network namespaces)",
                                                      show_default=False)],
                    name: GenNameOpt = None) -> None:
    """N pods on one host bridge (docker0 style), each with a default route via the bridge."""
    from .generate import bridge
    _print_generated(bridge(pods, name=name or "pods"), ["bridge", "--pods", str(pods)]
                     + (["--name", name] if name else []))


@generate_app.command("k8s", cls=_Command)
def generate_k8s(nodes: Annotated[int, typer.Option("--nodes", help="Kubernetes nodes", show_default=False)],
                 pods_per_node: Annotated[int, typer.Option("--pods-per-node", help="pods on each node",
                                                            show_default=False)],
                 mode: Annotated[K8sMode, typer.Option("--mode", help="host-gw: routes via the nodes' "
                                                       "underlay addresses; vxlan: a flannel-style overlay")]
                 = K8sMode.host_gw,
                 name: GenNameOpt = None,
                 hosts: Annotated[int | None, typer.Option("--hosts", help="spread the nodes over H machines "
                                                           "(hosts: and on:)", show_default=False)] = None) -> None:
    """The Kubernetes pod network: nodes with a pod bridge and a /24 pod CIDR each, on one underlay."""
    from .generate import k8s
    doc = k8s(nodes, pods_per_node, mode=mode.value, name=name or "k8s", hosts=hosts)
    _print_generated(doc, ["k8s", "--nodes", str(nodes), "--pods-per-node", str(pods_per_node), "--mode",
                           mode.value] + (["--name", name] if name else []) + (["--hosts", str(hosts)] if hosts
                                                                                  else []))


# --- graph (issue 12): the topology as a diagram ---------------------------------------------------
class GraphFormat(str, enum.Enum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"
    png = "png"


@command()
def graph(file: FileArg,
          fmt: Annotated[GraphFormat, typer.Option("-f", "--format", help="mermaid or dot (text); svg or png "
                                                   "(through Graphviz's dot)")] = GraphFormat.mermaid,
          out: Annotated[str | None, typer.Option("-o", "--out", metavar="FILE", help="write here (default: stdout)",
                                                  show_default=False)] = None) -> None:
    """Draw the topology: nodes, bridges, VXLANs, links with interface names and addresses (needs no root)."""
    from .graph import render
    desired = api.validate(file)
    data = render(desired.topology, fmt.value, desired.nodes)
    if out is not None:
        with open(out, "wb") as fh:
            fh.write(data)
    elif fmt is GraphFormat.png and sys.stdout.isatty():
        raise UsageError("-f png is binary: write it to a file with -o FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


# --- try (issue 12): apply, verify, destroy in a throw-away world ----------------------------------
@command(name="try")
def try_(file: FileArg, output: OutputOpt = Output.text, nat_backend: BackendOpt = None) -> None:
    """Apply, verify and destroy the manifest in a throw-away network + mount namespace (exit code: verify's).

    The machine's own network is never touched: everything lives and dies in that namespace. A
    topology with hosts: gets one such world per machine, joined by an underlay with their addresses."""
    from .trycmd import outcomes_json, try_manifest

    def announce(name, p, warnings, host):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if output is Output.text:
            where = f"machine {host}'s throw-away world" if host else "a throw-away network namespace"
            console.print(f"topology {name}: applying {len(p.actions)} operations in {where}")
        if progress:
            progress.expect(len(p.actions), "applying")

    def show(outcomes):  # type: ignore[no-untyped-def]
        for outcome in outcomes:
            for message in outcome.errors:
                err_console.print(message, markup=False)
        if output is Output.json:
            print_json(outcomes_json(outcomes))
            return
        reports = [o.applied.report for o in outcomes if o.applied and o.applied.report]
        for report in reports:
            print_report(report)
        if len(outcomes) > 1:
            console.print(f"on {len(outcomes)} machines together: {sum(r.passed for r in reports)} passed, "
                          f"{sum(r.failed for r in reports)} failed")
        for outcome in outcomes:
            if outcome.destroyed is not None:
                where = f"machine {outcome.host}'s world" if outcome.host else "the throw-away namespace"
                console.print(f"topology {outcome.topology}: destroyed ({len(outcome.destroyed.actions)} "
                              f"operations); {where} goes with it, this machine's network was not touched")

    progress = _progress(output)
    rc = try_manifest(file, show, nat_backend=_backend(nat_backend), progress=progress, on_plan=announce)
    if rc:
        raise typer.Exit(rc)


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so an interrupted apply rolls back (exit 143).
    def on_term(signum, frame):  # type: ignore[no-untyped-def]
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        # standalone_mode=False: click returns typer.Exit's code instead of exiting. prog_name: the
        # completion scripts name the `cnetctl` command also when it runs as `python -m cnetctl`.
        rc = app(standalone_mode=False, prog_name="cnetctl")
        sys.exit(rc if isinstance(rc, int) else 0)
    except CnetctlError as err:
        if isinstance(err, TopologyError):
            err_console.print(str(err), markup=False)
        else:
            err_console.print(f"cnetctl: {err}", markup=False)
        sys.exit(err.exit_code)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except KeyboardInterrupt:
        err_console.print("cnetctl: interrupted", markup=False)
        sys.exit(130)
    except SystemExit as ex:
        if ex.code == 143:  # SIGTERM outside an apply's changes (which say what they undid)
            err_console.print("cnetctl: terminated", markup=False)
        raise
    except typer.Abort as err:  # pragma: no cover - cnetctl asks nothing at a prompt
        err_console.print(f"cnetctl: {err}", markup=False)
        sys.exit(2)
    except Exception as err:  # click's usage errors
        # Duck-typed: typer >= 0.2x vendors click as typer._click, older typer uses click itself.
        show, code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if callable(show) and isinstance(code, int):  # ClickException: UsageError, NoSuchOption …
            show()
            sys.exit(2)
        if type(err).__name__ == "Exit" and isinstance(code, int):
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()

