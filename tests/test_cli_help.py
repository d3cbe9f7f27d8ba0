"""`watchgw <command> --help` describes every option, with its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from watchgw.cli import _parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_is_described_with_its_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for action in subcommands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings)
        assert action.help, f"{command} {name} has no help text"
        assert " ".join(action.help.split()) in shown
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in shown, f"{command} {name} does not show its default"


def test_the_demo_port_is_shown_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--port PORT port of the gateway and its live page (default: 8080)" in " ".join(
        capsys.readouterr().out.split()
    )
