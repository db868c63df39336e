"""`--help` explains every command and every option: an operator should not have to read the code."""

from __future__ import annotations

import click

from cli import main


def _commands(cmd: click.Command, path: tuple[str, ...] = ("docbus",)):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, cmd in _commands(main):
        if not (cmd.help or cmd.short_help):
            missing.append(" ".join(path))
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help and "--help" not in p.opts:
                missing.append(f"{' '.join(path)} {'/'.join(p.opts)}")
    assert missing == []
