"""`--config FILE.toml` for any command: add `config: ConfigOption = None` to its options.

The file's keys are the command's option names without `--` (`local-epochs` or `local_epochs`); its
values are what the options take: a TOML array for a repeatable option, true/false for a flag. Options
given on the command line override the file: the file's values become the command's defaults (click's
`default_map`), so click converts and checks them as it does the flags'. A relative path (an option of
type Path) is relative to the file's directory, as the file's author sees it; other strings are taken
as on the command line. `save` writes the options a command runs with as such a file.

Mistakes in the file are UserErrors naming the file and the key: a missing file, bad TOML (with its
line), an unknown key (with the close matches), a value of the wrong type; a UserError the command
raises about an option's value (`--nodes must be at least 1`) names the file when the value came from it."""
from __future__ import annotations

import difflib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from click.core import ParameterSource

from .errors import UserError

# TOML kind a value of each click type must have (bool first: in Python a bool is also an int)
_KINDS = ((click.types.BoolParamType, (bool,), "true or false"),
          (click.types.IntParamType, (int,), "an integer"),
          (click.types.FloatParamType, (int, float), "a number"),
          (click.types.StringParamType, (str,), "a string"),
          (click.Path, (str,), "a string (a path)"),
          (click.Choice, (str,), "a string"))


def key_of(param: click.Option) -> str:
    """The option's key in a file: its long name without `--` (`--json` for `json_out` is `json`)."""
    return next((opt[2:] for opt in param.opts if opt.startswith("--")), param.name.replace("_", "-"))


def _load(ctx: click.Context, param: click.Parameter, file: Path | None) -> None:
    """Read `file` and make its values the defaults of `ctx`'s options (an eager option's callback:
    it runs before the other options take their values)."""
    if file is None:
        return
    options = {}
    for o in ctx.command.params:
        if isinstance(o, click.Option) and o is not param:
            options[key_of(o)] = options[key_of(o).replace("-", "_")] = o
    given = {}
    for key, value in _read(file).items():
        option = options.get(key)
        if option is None:
            close = difflib.get_close_matches(key, sorted(map(key_of, options.values())))
            raise UserError(f"{file}: unknown key {key!r}; " + (
                f"did you mean {' or '.join(map(repr, close))}?" if close else
                f"the keys are the options of `{ctx.command_path} --help` without --"))
        if option in given:
            raise UserError(f"{file}: {key_of(option)} is given twice")
        given[option] = _value(ctx, file, key, option, value)
    ctx.default_map = {**(ctx.default_map or {}), **{o.name: value for o, value in given.items()}}
    ctx.with_resource(_naming_the_file(ctx, file, list(given)))


def _read(file: Path) -> dict:
    import tomllib

    try:
        return tomllib.loads(file.read_text())
    except OSError as exc:
        raise UserError(f"cannot read config file {file}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is not valid TOML: {exc}") from None


@contextmanager
def _naming_the_file(ctx: click.Context, file: Path, options: list[click.Option]):
    """Around the command's run (click >= 8.2 passes its exception to a context's resources): a
    UserError about an option (`--KEY`) whose value came from the file says so."""
    try:
        yield
    except UserError as exc:
        named = [key_of(o) for o in options if ctx.get_parameter_source(o.name) is ParameterSource.DEFAULT_MAP
                 and re.search(rf"--{re.escape(key_of(o))}(?![\w-])", str(exc))]
        if not named:
            raise
        raise UserError(f"{exc} ({', '.join(named)} from {file})") from None


def _value(ctx: click.Context, file: Path, key: str, option: click.Option, value):
    """`value` from the file for `option`, checked: its TOML kind, then click's own conversion."""
    kinds, expected = next(((k, e) for t, k, e in _KINDS if isinstance(option.type, t)), (None, ""))
    items = value if option.multiple and isinstance(value, list) else [value]
    if kinds is not None and (option.multiple and not isinstance(value, list) or any(
            not isinstance(v, kinds) or isinstance(v, bool) and bool not in kinds for v in items)):
        shown = json.dumps(value, default=str)
        raise UserError(f"{file}: {key} = {shown} should be " +
                        (f"an array of: {expected}" if option.multiple else expected) + " (see `--help`)")
    if isinstance(option.type, click.Path):
        items = [os.path.join(file.absolute().parent, os.path.expanduser(v)) for v in items]
    try:
        return option.type_cast_value(ctx, items if option.multiple else items[0])
    except click.BadParameter as exc:
        raise UserError(f"{file}: {key}: {exc.format_message()}") from None


ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE.toml", callback=_load, is_eager=True, expose_value=False, show_default=False,
    help="Read options from this TOML file: its keys are the option names without -- (local-epochs = 2), a "
         "repeatable option takes an array, a flag true or false, a relative path is relative to the file. "
         "Options given on the command line override it.")]


def save(ctx: click.Context, file: Path, leave_out: set[str]) -> None:
    """Write the options `ctx`'s command runs with as a TOML file that `--config` reads back: all but
    the keys in `leave_out` and those not given (None); a path made absolute."""
    import tomli_w

    from manymodels.node.runtime.store import atomic_write

    table = {}
    for option in ctx.command.params:
        value = ctx.params.get(option.name)
        if not isinstance(option, click.Option) or key_of(option) in leave_out or value in (None, ()):
            continue
        if isinstance(option.type, click.Path):
            value = [os.path.abspath(v) for v in value] if option.multiple else os.path.abspath(value)
        table[key_of(option)] = list(value) if option.multiple else value
    text = f"# the options of a run, to run it again: {ctx.command_path} --config {file}\n" + tomli_w.dumps(table)
    atomic_write(file, text.encode(), mode=0o644)
