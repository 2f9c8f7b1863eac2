"""The simulated machines themselves: separate kernels' worth of state, joined only by the underlay."""

from __future__ import annotations

from tests.machines import machines


def test_machines_are_separate_and_joined_by_the_underlay() -> None:
    with machines([("m1", "192.0.2.11"), ("m2", "192.0.2.12")]) as ms:
        m1, m2 = ms["m1"], ms["m2"]
        links1 = {link["ifname"] for link in m1.ip_json("link")}  # type: ignore[union-attr]
        assert links1 == {"lo", "eth1"}
        assert m1.run("ping", "-c", "1", "-W", "1", "-n", "-q", "192.0.2.12").returncode == 0
        m1.run("ip", "netns", "add", "only-on-m1", check=True)
        assert "only-on-m1" in m1.run("ip", "netns", "list").stdout
        assert "only-on-m1" not in m2.run("ip", "netns", "list").stdout
        assert m1.state_dir != m2.state_dir


def test_the_fork_server_gives_each_call_its_own_terminal_settings() -> None:
    """tests/forkserver.py does not pre-import cnetctl.render: its consoles are built from the
    call's environment, as in a spawned `python -m cnetctl`."""
    import os

    from tests.forkserver import _spawn, cnetctl_call
    from tests.kernel.conftest import ROOT

    for extra in ({"FORCE_COLOR": "1"}, {"NO_COLOR": "1"}):
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")} | extra
        forked = cnetctl_call(["plan", "manifests/quickstart.yaml"], env, ROOT)
        spawned = _spawn(["plan", "manifests/quickstart.yaml"], env, ROOT, 60, None)
        assert forked.returncode == spawned.returncode == 0, forked.stderr
        assert forked.stdout == spawned.stdout
        assert ("\x1b[" in forked.stdout) == ("FORCE_COLOR" in extra)
