#!/usr/bin/env python3
"""cnetctl against a shell script of `ip` commands and the `ip -batch` floor, same kernel work.

Runs inside the throw-away world (tests/world.sh: a private network + mount
namespace; the machine's real network is never touched). For each shape and size
it times, in one run and one world:

  cnetctl apply --no-verify, a no-op re-apply, verify, destroy (the CLI, as a user runs it);
  the same operations as a shell script of single `ip` commands, up and down;
  the same operations through `ip -batch` (one process for the root namespace, one per
  namespace), up and down — the floor;
  and CLI start-up (`cnetctl --help`, `cnetctl validate` of a small file).

"Down" includes waiting until the kernel has released the veths, as cnetctl's destroy does.

    sudo make bench                               # bridge 10 50 250, k8s, nat
    sudo python3 bench/bench.py --shape bridge --sizes 10 50 250 1000 --out run.json
    python3 bench/bench.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def timed(argv: list[str], **kw: Any) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}… failed ({res.returncode}): {res.stderr[-800:]}")
    return took


def wait_released() -> float:
    """Until no veth is left in the root namespace: the kernel frees them asynchronously."""
    t0 = time.perf_counter()
    while subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True).stdout:
        time.sleep(0.005)
    return time.perf_counter() - t0


def cnetctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnetctl", *args]


def measure_cnetctl(path: str) -> dict[str, float]:
    out = {"apply": timed(cnetctl("apply", path, "--no-verify"), cwd=ROOT),
           "reapply": timed(cnetctl("apply", path, "--no-verify"), cwd=ROOT)}
    try:
        out["verify"] = timed(cnetctl("verify", path), cwd=ROOT)
    except RuntimeError as err:
        print(f"  verify failed: {err}", file=sys.stderr)
        out["verify"] = float("nan")
    out["destroy"] = timed(cnetctl("destroy", "--name", "bench"), cwd=ROOT)
    out["destroy"] += wait_released()   # destroy already waits: this adds ~0
    return out


def measure_ip(path: str, workdir: str) -> dict[str, float]:
    import ipscript

    from cnetctl import api

    desired = api.validate(path)
    cmds = ipscript.commands(desired.resources)
    down = ipscript.shell_script(ipscript.teardown(desired.resources))
    out: dict[str, float] = {"operations": len(cmds)}
    out["shell_up"] = timed(["bash", "-c", ipscript.shell_script(cmds)])
    out["shell_down"] = timed(["bash", "-c", down]) + wait_released()
    batch = ipscript.batch_script(cmds, workdir)
    out["batch_up"] = timed(["bash", "-c", batch])
    down_batch = ipscript.batch_script(ipscript.teardown(desired.resources), workdir + "/down")
    out["batch_down"] = timed(["bash", "-c", down_batch]) + wait_released()
    return out


def startup(workdir: str) -> dict[str, float]:
    from cnetctl import generate

    small = Path(workdir) / "small.yaml"
    small.write_text(generate.to_yaml(generate.bridge(2, name="small")))
    big = Path(workdir) / "big.yaml"
    big.write_text(generate.to_yaml(generate.bridge(10_000, name="big")))
    runs = {"help": [timed(cnetctl("--help"), cwd=ROOT) for _ in range(3)],
            "validate": [timed(cnetctl("validate", str(small)), cwd=ROOT) for _ in range(3)],
            "validate_10000": [timed(cnetctl("validate", str(big)), cwd=ROOT)]}
    return {k: min(v) for k, v in runs.items()}


def run_all(shapes: list[str], sizes: list[int]) -> dict[str, Any]:
    from cnetctl import generate

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                           "python": platform.python_version()},
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(workdir + "/down")
        results["startup"] = startup(workdir)
        for shape in shapes:
            for n in sizes:
                path = f"{workdir}/{shape}-{n}.yaml"
                Path(path).write_text(generate.to_yaml(manifest(shape, n)))
                row = {"shape": shape, "n": n, **measure_ip(path, workdir), **measure_cnetctl(path)}
                results["rows"].append(row)
                print_row(row)
    return results


COLUMNS = ("apply", "reapply", "verify", "destroy", "shell_up", "shell_down", "batch_up", "batch_down")


def print_row(row: dict[str, Any]) -> None:
    ratio_up = row["apply"] / row["batch_up"]
    ratio_down = row["destroy"] / row["batch_down"]
    vals = " ".join(f"{row[c]:8.2f}" for c in COLUMNS)
    print(f"{row['shape']:6} {row['n']:5} {int(row['operations']):6} {vals} {ratio_up:7.2f}x {ratio_down:7.2f}x "
          f"{row['shell_up'] / row['apply']:6.2f}x {row['shell_down'] / row['destroy']:6.2f}x", flush=True)


def header() -> None:
    print(f"{'shape':6} {'n':>5} {'ops':>6} " + " ".join(f"{c:>8}" for c in COLUMNS)
          + f" {'up/floor':>8} {'dn/floor':>8} {'sh/up':>7} {'sh/dn':>7}")


def compare(a_path: str, b_path: str) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    print(f"{'shape':6} {'n':>5} " + " ".join(f"{c:>17}" for c in ("apply", "reapply", "verify", "destroy")))
    for row in b["rows"]:
        old = next((r for r in a["rows"] if (r["shape"], r["n"]) == (row["shape"], row["n"])), None)
        if old is None:
            continue
        cells = [f"{old[c]:6.2f}->{row[c]:6.2f}s" for c in ("apply", "reapply", "verify", "destroy")]
        print(f"{row['shape']:6} {row['n']:5} " + " ".join(f"{c:>17}" for c in cells))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 50, 250])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two result files and exit")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return 0
    if enter_world("bench"):
        return 4
    header()
    results = run_all(args.shape, args.sizes)
    s = results["startup"]
    print(f"start-up: cnetctl --help {s['help']:.2f} s, validate (small file) {s['validate']:.2f} s, "
          f"validate of 10,000 pods {s['validate_10000']:.2f} s; "
          f"{results['machine']['cpus']} CPUs, kernel {results['machine']['kernel']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
