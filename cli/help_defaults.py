"""Defaults in `--help` that typer cannot show by itself: an option declared with the default None
("not given") because its value comes from elsewhere — `node start`'s saved config, a dataclass's
field — shows that value. The values are read when the help is shown, so the modules holding them
(the daemon's imports libp2p) are imported only then, not on every command."""
from __future__ import annotations

from collections.abc import Callable

import click
from typer.core import TyperCommand


def shown(value, name: str = "") -> str:
    """A default as `--help` shows it: a flag by its option (no-NAME when off), a list comma-joined,
    nothing as "none"."""
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return "none" if value in ("", None) else str(value)


def with_defaults(defaults: Callable[[], dict[str, str]]) -> type[TyperCommand]:
    """A command class (typer's `command(cls=...)`) whose help shows `defaults()`: option name -> text."""
    class Command(TyperCommand):
        def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            texts = defaults()
            for param in self.params:
                if isinstance(param, click.Option) and param.name in texts:
                    param.show_default = texts[param.name]
            super().format_help(ctx, formatter)
    return Command
