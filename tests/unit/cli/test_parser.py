"""The command line follows its conventions: help for every command and argument, a command
for every client-facing RPC, --version, and shell completion."""

from __future__ import annotations

import argparse

import pytest

from mixip.cli.commands import RPC_COMMANDS
from mixip.cli.main import build_parser, main
from mixip.gateway.v1 import admin_pb2, gateway_pb2


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser, its help) for every command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _commands(sub, (*path, name))


def test_every_command_and_argument_has_help_text():
    missing = []
    for path, parser, help_text in _commands(build_parser()):
        if not help_text:
            missing.append(" ".join(path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{' '.join(path)} {action.dest}")
    assert missing == []


def test_every_client_facing_rpc_has_a_command():
    rpcs = {
        *gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name,
        *admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name,
    }
    assert set(RPC_COMMANDS) == rpcs
    commands = {" ".join(path) for path, _, _ in _commands(build_parser())}
    assert {c for c in RPC_COMMANDS.values() if c not in commands} == set()


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0  # alone: without building the parser
    assert capsys.readouterr().out.startswith("mixip ")
    with pytest.raises(SystemExit) as done:  # with other options: argparse's action
        main(["--json", "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("mixip ")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script_for_the_shell(capsys, shell):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "faces" in script and "vault-status" in script
