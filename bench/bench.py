#!/usr/bin/env python3
"""cnetctl against a shell script of `ip` commands and the `ip -batch` floor, same kernel work.

Runs inside the throw-away world (tests/world.sh: a private network + mount
namespace; the machine's real network is never touched). For each shape and size
it times, in one run and one world:

  cnetctl apply --no-verify, a no-op re-apply, verify, destroy (the CLI, as a user runs it);
  the same operations as a shell script of single `ip` commands, up and down;
  the same operations through `ip -batch` (one process for the root namespace, one per
  namespace), up and down — the floor;
  and CLI start-up (`cnetctl --help`, `validate` of a small file, `schema`, `validate` of 10,000 pods).

"Down" includes waiting until the kernel has released the veths, as cnetctl's destroy does.
apply, re-apply and destroy run under `ulimit -n 1024` (--nofile), and their peak RSS is kept.

    sudo make bench                                 # bridge, k8s and nat at 10 50 250 1000
    sudo python3 bench/bench.py --shape bridge --sizes 10 50 250 1000 --out run.json
    sudo python3 bench/bench.py --root /path/to/old/checkout --out before.json   # another checkout's cnetctl
    python3 bench/bench.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from world import enter_world  # bench/world.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHAPES = ("bridge", "k8s", "nat")
COLUMNS = ("apply", "reapply", "verify", "destroy", "destroy_after_verify", "shell_up", "shell_down", "batch_up",
           "batch_down")
TITLES = {"destroy_after_verify": "dn+ping"}


class Runner:
    """Runs `python -m cnetctl` of one checkout, as a user would: bytecode cached (the
    environment of a test run may forbid writing it, which would add its compilation to
    every start), optionally under a descriptor limit."""

    def __init__(self, root: Path, nofile: int):
        self.root, self.nofile = root, nofile
        self.last_rc = 0
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cnetctl", *args]

    def timed(self, *args: str, limited: bool = False, ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
        """Wall seconds and peak RSS (KiB) of `cnetctl ARGS`; RuntimeError when it fails
        (an exit code not in `ok`; the code is kept in last_rc)."""
        took, rss, self.last_rc = timed_rc(self.argv(*args), cwd=self.root, env=self.env,
                                           nofile=self.nofile if limited else 0, ok=ok)
        return took, rss


def timed(argv: list[str]) -> tuple[float, int]:
    took, rss, _ = timed_rc(argv)
    return took, rss


def timed_rc(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
             nofile: int = 0, ok: tuple[int, ...] = (0,)) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit code of `argv`."""
    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=env, preexec_fn=limit)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in ok:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv[:5])}… failed ({proc.returncode}): "
                               f"{err.read().decode(errors='replace')[-800:]}")
    return took, usage.ru_maxrss, proc.returncode


def wait_released() -> float:
    """Until no veth is left in the root namespace: the kernel frees them asynchronously."""
    t0 = time.perf_counter()
    while subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout:
        time.sleep(0.005)
    return time.perf_counter() - t0


def manifest(shape: str, n: int) -> dict[str, Any]:
    """n = pods. k8s: n pods over max(2, n // 25) nodes; nat: the bridge plus MASQUERADE and
    one published port per pod (DNAT)."""
    from cnetctl import generate

    if shape == "bridge":
        return generate.bridge(n, name="bench")
    if shape == "k8s":
        nodes = max(2, n // 25)
        return generate.k8s(nodes, max(1, n // nodes), name="bench")
    doc = generate.bridge(n, name="bench")
    host = doc["nodes"]["host"]
    host["sysctls"] = {"net.ipv4.ip_forward": 1}
    host["nat"] = [{"masquerade": {"source": str(generate.BRIDGE_SUBNET), "out_interface": "!cbr0"}}]
    host["nat"] += [{"dnat": {"protocol": "tcp", "port": 20000 + i,
                              "to": f"{generate._host(generate.BRIDGE_SUBNET, i + 2)}:80"}} for i in range(n)]
    return doc


def measure_cnetctl(run: Runner, path: str) -> dict[str, float]:
    """apply, no-op re-apply and destroy; then apply again (not timed), verify, and a destroy
    after that traffic: the kernel then takes ~1 s longer to release the namespaces (their
    devices wait for the references the packets' routes hold), which the `ip` scripts, sending
    nothing, never pay. `destroy` is the one comparable with them."""
    out: dict[str, float] = {}
    rss = []
    for column, args in (("apply", ("apply", path, "--no-verify")), ("reapply", ("apply", path, "--no-verify")),
                         ("destroy", ("destroy", "--name", "bench")), ("", ("apply", path, "--no-verify"))):
        took, peak = run.timed(*args, limited=True)
        rss.append(peak)
        if column == "destroy":
            took += wait_released()   # destroy already waits: this adds ~0
        if column:
            out[column] = took
    try:
        # Exit 1 (a check failed) is a measurement too: a bridge of 1000 ports outgrows the
        # kernel's ARP table (gc_thresh2 = 512 entries), and half the pings get no answer.
        out["verify"], peak = run.timed("verify", path, ok=(0, 1))
        rss.append(peak)
        out["verify_failed"] = failed_checks(run, path) if run.last_rc else 0
    except RuntimeError as err:
        print(f"  verify failed: {err}", file=sys.stderr)
        out["verify"] = float("nan")
    out["destroy_after_verify"], peak = run.timed("destroy", "--name", "bench", limited=True)
    out["destroy_after_verify"] += wait_released()
    out["rss_mb"] = max(rss + [peak]) / 1024
    return out


def failed_checks(run: Runner, path: str) -> int:
    """How many checks a verify (run again, with JSON output) reports failed."""
    out = subprocess.run(run.argv("verify", path, "-o", "json"), cwd=run.root, env=run.env, capture_output=True,
                         text=True)
    try:
        return sum(1 for c in json.loads(out.stdout)["checks"] if not c["ok"])
    except (ValueError, KeyError):
        return -1


def measure_ip(path: str, workdir: str) -> dict[str, float]:
    import ipscript

    from cnetctl import api

    desired = api.validate(path)
    cmds = ipscript.commands(desired.resources)
    down = ipscript.shell_script(ipscript.teardown(desired.resources))
    out: dict[str, float] = {"operations": len(cmds), "checks": len(desired.topology.checks)}
    out["shell_up"] = timed(["bash", script(workdir, "up.sh", ipscript.shell_script(cmds))])[0]
    out["shell_down"] = timed(["bash", script(workdir, "down.sh", down)])[0] + wait_released()
    batch = ipscript.batch_script(cmds, workdir)
    out["batch_up"] = timed(["bash", script(workdir, "batch-up.sh", batch)])[0]
    down_batch = ipscript.batch_script(ipscript.teardown(desired.resources), workdir + "/down")
    out["batch_down"] = timed(["bash", script(workdir, "batch-down.sh", down_batch)])[0] + wait_released()
    return out


def script(workdir: str, name: str, text: str) -> str:
    """A script as a file (thousands of commands exceed the limit of one argument)."""
    path = Path(workdir) / name
    path.write_text(text)
    return str(path)


def startup(run: Runner, workdir: str, repeat: int = 5) -> dict[str, float]:
    """Fastest of `repeat` runs (start-up is what is measured, not the machine's load)."""
    from cnetctl import generate

    small = Path(workdir) / "small.yaml"
    small.write_text(generate.to_yaml(generate.bridge(2, name="small")))
    big = Path(workdir) / "big.yaml"
    big.write_text(generate.to_yaml(generate.bridge(10_000, name="big")))
    run.timed("validate", str(small))   # compiles and caches the bytecode once
    runs = {"help": [run.timed("--help")[0] for _ in range(repeat)],
            "validate": [run.timed("validate", str(small))[0] for _ in range(repeat)],
            "schema": [run.timed("schema")[0] for _ in range(repeat)],
            "validate_10000": [run.timed("validate", str(big))[0]]}
    return {k: min(v) for k, v in runs.items()}


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "?")
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(), "python": platform.python_version()}


def run_all(run: Runner, shapes: list[str], sizes: list[int]) -> dict[str, Any]:
    from cnetctl import generate

    results: dict[str, Any] = {"machine": machine(), "root": str(run.root), "nofile": run.nofile,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg(),
                               "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(workdir + "/down")
        results["startup"] = startup(run, workdir)
        print_startup(results["startup"])
        header()
        for shape in shapes:
            for n in sizes:
                path = f"{workdir}/{shape}-{n}.yaml"
                Path(path).write_text(generate.to_yaml(manifest(shape, n)))
                row = {"shape": shape, "n": n, **measure_ip(path, workdir), **measure_cnetctl(run, path)}
                results["rows"].append(row)
                print_row(row)
    results["load_after"] = os.getloadavg()
    return results


def ratios(row: dict[str, Any]) -> dict[str, float]:
    return {"up/floor": row["apply"] / row["batch_up"], "dn/floor": row["destroy"] / row["batch_down"],
            "sh/up": row["shell_up"] / row["apply"], "sh/dn": row["shell_down"] / row["destroy"]}


def header() -> None:
    print(f"{'shape':6} {'n':>5} {'ops':>5} " + " ".join(f"{TITLES.get(c, c):>8}" for c in COLUMNS)
          + f" {'up/floor':>8} {'dn/floor':>8} {'sh/up':>6} {'sh/dn':>6} {'rss MB':>6}", flush=True)


def print_row(row: dict[str, Any]) -> None:
    vals = " ".join(f"{row.get(c, math.nan):8.2f}" for c in COLUMNS)
    r = ratios(row)
    failed = f"  ({row['verify_failed']} of {int(row['checks'])} checks failed)" if row.get("verify_failed") else ""
    print(f"{row['shape']:6} {row['n']:5} {int(row['operations']):5} {vals} {r['up/floor']:7.2f}x "
          f"{r['dn/floor']:7.2f}x {r['sh/up']:5.1f}x {r['sh/dn']:5.1f}x {row.get('rss_mb', 0):6.0f}{failed}",
          flush=True)


def print_startup(s: dict[str, float]) -> None:
    print(f"start-up (fastest of 5): --help {s['help']:.2f} s, validate (small file) {s['validate']:.2f} s, "
          f"schema {s.get('schema', math.nan):.2f} s; validate of 10,000 pods {s['validate_10000']:.2f} s",
          flush=True)


def markdown(results: dict[str, Any]) -> str:
    """The table as the README shows it."""
    lines = ["| shape | pods | shell up / down | `ip -batch` up / down | apply | no-op re-apply | verify | destroy "
             "| apply ÷ floor | destroy ÷ floor | shell ÷ apply | peak RSS |", "| --- " * 12 + "|"]
    for row in results["rows"]:
        r = ratios(row)
        failed = f" ({row['verify_failed']} failed)" if row.get("verify_failed") else ""
        lines.append(f"| {row['shape']} | {row['n']} | {row['shell_up']:.2f} / {row['shell_down']:.2f} s "
                     f"| {row['batch_up']:.2f} / {row['batch_down']:.2f} s | {row['apply']:.2f} s "
                     f"| {row['reapply']:.2f} s | {row['verify']:.2f} s{failed} | {row['destroy']:.2f} s "
                     f"| {r['up/floor']:.2f}× | {r['dn/floor']:.2f}× | {r['sh/up']:.1f}× "
                     f"| {row.get('rss_mb', 0):.0f} MB |")
    s = results.get("startup", {})
    lines.append(f"\nStart-up (fastest of 5): `--help` {s.get('help', math.nan):.2f} s, `validate` of a small file "
                 f"{s.get('validate', math.nan):.2f} s, `schema` {s.get('schema', math.nan):.2f} s; "
                 f"`validate` of 10,000 pods {s.get('validate_10000', math.nan):.2f} s.")
    return "\n".join(lines)


def compare(a_path: str, b_path: str) -> None:
    """Per row, each cnetctl column before -> after and the speed-up; then start-up."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    cols = ("apply", "reapply", "verify", "destroy")
    print(f"{'shape':6} {'n':>5} " + " ".join(f"{c:>22}" for c in cols) + f" {'up/floor':>15}")
    for row in b["rows"]:
        old = next((r for r in a["rows"] if (r["shape"], r["n"]) == (row["shape"], row["n"])), None)
        if old is None:
            continue
        cells = [f"{old[c]:7.2f} ->{row[c]:6.2f} {old[c] / row[c]:5.1f}x" for c in cols]
        floors = f"{ratios(old)['up/floor']:6.1f}x ->{ratios(row)['up/floor']:5.2f}x"
        print(f"{row['shape']:6} {row['n']:5} " + " ".join(f"{c:>22}" for c in cells) + f" {floors:>15}")
    for key in ("help", "validate", "schema", "validate_10000"):
        old, new = a.get("startup", {}).get(key), b.get("startup", {}).get(key)
        if old and new:
            print(f"start-up {key:15} {old:6.2f} -> {new:6.2f} s  ({old / new:.1f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 50, 250])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose cnetctl is measured (default: this one)")
    ap.add_argument("--nofile", type=int, default=1024,
                    help="RLIMIT_NOFILE (soft and hard) for apply, re-apply and destroy; 0: leave it")
    ap.add_argument("--markdown", metavar="RESULTS", help="print a results file as the README's table and exit")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two result files and exit")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return 0
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    if enter_world("bench"):
        return 4
    results = run_all(Runner(Path(args.root).resolve(), args.nofile), args.shape, args.sizes)
    m = results["machine"]
    print(f"{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}; "
          f"load {results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
