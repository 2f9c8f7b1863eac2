"""Shell completion (typer's): --show-completion prints a script, --install-completion installs it,
and the completion protocol answers with commands and choices."""

from __future__ import annotations

import sys

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from cnetctl import cli
    # As the installed console script runs: argv[0] is the `cnetctl` command (not `python -m`).
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/cnetctl", *args])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    out = capsys.readouterr()
    return int(ex.value.code or 0), out.out + out.err


def test_help_offers_completion(monkeypatch, capsys):
    rc, out = run_cli(monkeypatch, capsys, "--help")
    assert rc == 0 and "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("shell, line", [("bash", "complete -o default -F _cnetctl_completion cnetctl"),
                                         ("zsh", "compdef _cnetctl_completion cnetctl"),
                                         ("fish", "complete --command cnetctl")])
def test_show_completion_prints_the_script(monkeypatch, capsys, shell, line):
    # The shell is detected from the parent processes; typer's switch takes it as a value instead.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    rc, out = run_cli(monkeypatch, capsys, "--show-completion", shell)
    assert rc == 0 and line in out and "_CNETCTL_COMPLETE" in out, out


def test_install_completion_writes_into_the_users_home(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    rc, out = run_cli(monkeypatch, capsys, "--install-completion", "bash")
    assert rc == 0, out
    assert "_CNETCTL_COMPLETE" in (tmp_path / ".bash_completions" / "cnetctl.sh").read_text()
    assert ".bash_completions/cnetctl.sh" in (tmp_path / ".bashrc").read_text()


@pytest.mark.parametrize("words, cword, want", [
    ("cnetctl gen", 1, {"generate"}),
    ("cnetctl d", 1, {"destroy"}),
    ("cnetctl graph x.yaml -f ", 4, {"mermaid", "dot", "svg", "png"}),
    ("cnetctl generate k8s --mode ", 4, {"host-gw", "vxlan"}),
    ("cnetctl destroy --a", 2, {"--all"}),
])
def test_the_completion_protocol_answers(monkeypatch, capsys, words, cword, want):
    monkeypatch.setenv("_CNETCTL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    rc, out = run_cli(monkeypatch, capsys)
    assert rc == 0 and set(out.split()) == want, out
