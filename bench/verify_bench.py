#!/usr/bin/env python3
"""Benchmark: 250 ping checks through cnetctl.api.verify (target: <= 2 s on 2 cores).

Builds, inside the throw-away world (tests/world.sh: a private network + mount
namespace, so the machine's real network is never touched), a bridge with
NODES namespaces on it, then times `api.verify` of a manifest with 250 ping
checks between random pairs (IPv4 and IPv6). The time includes everything
verify does: load + validate, observe/read-back, and the pings.

    sudo python3 bench/verify_bench.py [--nodes 25] [--checks 250] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from world import enter_world  # bench/world.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent


def manifest(nodes: int, checks: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["apiVersion: cnetctl/v1", "name: bench", "nodes:", "  host:", "    bridges:",
             '      bbr0: {addresses: [10.77.0.1/24, "fd00:77::1/64"]}']
    for i in range(nodes):
        lines += [f"  n{i}:", "    interfaces:",
                  f'      eth0: {{addresses: [10.77.0.{i + 10}/24, "fd00:77::{i + 10:x}/64"]}}']
    lines.append("links:")
    lines += [f"  - [n{i}:eth0, host:bbr0]" for i in range(nodes)]
    lines.append("checks:")
    for _ in range(checks):
        a, b = rng.sample(range(nodes), 2)
        to = f"10.77.0.{b + 10}" if rng.random() < 0.7 else f"fd00:77::{b + 10:x}"
        lines.append(f'  - {{ping: {{from: n{a}, to: "{to}"}}}}')
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=25)
    ap.add_argument("--checks", type=int, default=250)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=250)
    args = ap.parse_args()

    if enter_world("verify_bench"):
        return 4

    sys.path.insert(0, str(ROOT))
    from cnetctl import api
    from cnetctl.kernel.netns import Sockets
    from cnetctl.verify import run_checks

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(manifest(args.nodes, args.checks, args.seed))
        t0 = time.perf_counter()
        api.apply(str(path), verify=False)
        built = time.perf_counter() - t0
        try:
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                report = api.verify(str(path))
                times.append(time.perf_counter() - t0)
                pings = [c for c in report.checks if c.kind == "ping"]
                if not report.ok or len(pings) != args.checks:
                    bad = [c.detail for c in report.checks if not c.ok][:5]
                    print(f"verify_bench: {report.failed} checks failed: {bad}", file=sys.stderr)
                    return 1
            desired = api.validate(str(path))
            checks_only = []
            for _ in range(args.runs):
                with Sockets() as sockets:
                    t0 = time.perf_counter()
                    run_checks(desired, sockets)
                    checks_only.append(time.perf_counter() - t0)
        finally:
            api.destroy("bench")
    print(f"topology: {args.nodes} namespaces on one bridge (apply {built:.2f} s); "
          f"{args.checks} ping checks per verify, {os.cpu_count()} CPUs")
    print(f"api.verify wall time over {args.runs} runs: min {min(times):.3f} s, "
          f"median {statistics.median(times):.3f} s, max {max(times):.3f} s (target <= 2 s)")
    print(f"of which the {args.checks} pings (run_checks alone): median {statistics.median(checks_only):.3f} s")
    return 0 if statistics.median(times) <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
