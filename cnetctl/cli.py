"""The command line: options, rendering, exit codes. The only place that catches exceptions."""

from __future__ import annotations

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
    from rich.markup import escape

    from . import api
    from .faults import hook_from_env
    from .plan import Action
    from .render import STYLE, console, err_console, plan_json, print_json, print_plan, print_report, print_status
else:
    # Imported at first use (cnetctl/lazy.py): --help, validate and schema start without
    # pyroute2, the kernel/plan/verify code and rich's renderers.
    from .lazy import LazyAttr, LazyModule

    api = LazyModule("cnetctl.api")
    escape = LazyAttr("rich.markup", "escape")
    hook_from_env = LazyAttr("cnetctl.faults", "hook_from_env")
    STYLE, console, err_console, plan_json, print_json, print_plan, print_report, print_status = (
        LazyAttr("cnetctl.render", name) for name in ("STYLE", "console", "err_console", "plan_json", "print_json",
                                                      "print_plan", "print_report", "print_status"))


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
    add_completion=False,
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


def _progress(output: Output):  # type: ignore[no-untyped-def]
    if output is Output.json:
        return None

    def show(phase: str, action: Action) -> None:
        # What a rollback undoes is said as such: a "+" printed earlier no longer exists.
        prefix = "rollback: " if phase == "undo" else ""
        console.print(f"[{STYLE[action.op]}]{prefix}{escape(action.describe())}[/]")
    return show


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
    """Print the JSON Schema of the manifest."""
    from .model.topology import Topology
    print_json(Topology.model_json_schema(by_alias=True))


@command()
def plan(file: FileArg, output: OutputOpt = Output.text, nat_backend: BackendOpt = None) -> None:
    """Show what apply would create (+), change (~) and delete (-), touching nothing."""
    desired, the_plan = api.plan_file(file, Opts.state_dir, _backend(nat_backend))
    _warn(desired.warnings)
    if output is Output.json:
        print_json(plan_json(the_plan, desired.name))
    else:
        print_plan(the_plan, desired.name)


@command()
def apply(file: FileArg, output: OutputOpt = Output.text,
          no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the checks after applying")] = False,
          lock_timeout: LockOpt = 30.0, nat_backend: BackendOpt = None) -> None:
    """Reconcile the kernel with the manifest, then run its checks.

    Creates what is missing, corrects what drifted, removes what the topology owns
    that the file no longer declares. On a kernel error everything this run did is
    rolled back (exit 3)."""

    def announce(name, p, warnings):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if output is Output.text:
            if p.empty:
                console.print(f"topology {name}: no changes")
            else:
                c = p.counts()
                console.print(f"topology {name}: applying {c['create']} to create, {c['update']} to change, "
                              f"{c['delete']} to delete")

    result = api.apply(file, Opts.state_dir, verify=not no_verify, lock_timeout=lock_timeout,
                       progress=_progress(output), on_plan=announce, nat_backend=_backend(nat_backend),
                       before_step=hook_from_env())
    if output is Output.json:
        data = {"topology": result.topology, "plan": plan_json(result.plan, result.topology),
                "warnings": result.warnings, "verify": result.report.to_json() if result.report else None}
        print_json(data)
    elif result.report:
        print_report(result.report)
    if result.report and not result.report.ok:
        raise typer.Exit(1)


@command()
def verify(file: FileArg, output: OutputOpt = Output.text, nat_backend: BackendOpt = None) -> None:
    """Run the manifest's checks (real pings, kernel route lookups) and the read-back against what is live."""
    report = api.verify(file, Opts.state_dir, _backend(nat_backend))
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
            output: OutputOpt = Output.text, lock_timeout: LockOpt = 30.0) -> None:
    """Remove everything a topology owns; idempotent, works without the file or the state file."""
    if (file is None) == (name is None):
        raise UsageError("give either FILE or --name NAME")
    if name is None:
        assert file is not None
        name = api.name_of(file)
    import re

    from .model.topology import TOPOLOGY_NAME_RE
    if not re.match(TOPOLOGY_NAME_RE, name):
        raise UsageError(f"invalid topology name {name!r}")

    def announce(p, warnings):  # type: ignore[no-untyped-def]
        _warn(warnings)
        if output is Output.text and p.empty:
            console.print(f"topology {name}: nothing to destroy")

    the_plan = api.destroy(name, Opts.state_dir, lock_timeout=lock_timeout, progress=_progress(output),
                           on_plan=announce, before_step=hook_from_env())
    if output is Output.json:
        print_json({"topology": name, "destroyed": plan_json(the_plan, name)})
    elif not the_plan.empty:
        console.print(f"topology {name}: destroyed ({len(the_plan.actions)} operations)")


@command()
def status(name: Annotated[str | None, typer.Argument(help="one topology (default: all)", show_default=False)]
           = None, output: OutputOpt = Output.text) -> None:
    """List applied topologies and their namespaces and links, read from the kernel."""
    items = api.status(name, Opts.state_dir)
    if output is Output.json:
        print_json({"topologies": [i.to_json() for i in items]})
    else:
        print_status(items)


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


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so an interrupted apply rolls back (exit 143).
    def on_term(signum, frame):  # type: ignore[no-untyped-def]
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        # standalone_mode=False: click returns typer.Exit's code instead of exiting.
        rc = app(standalone_mode=False)
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
    except (typer.BadParameter, typer.Abort) as err:  # pragma: no cover - typer renders these itself
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

