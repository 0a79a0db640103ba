"""Declaring an option once: `option` makes a dataclass field that carries its help, choices or range and
what ``iic train --resume`` may do with it; `options_of` turns a config class into its command-line
`Option`s, `check_option` refuses a value in the words every command uses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .vocab import ConfigError

RESUME_FIXED, RESUME_FREE, RESUME_EXTEND = "fixed", "free", "extend"


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    flag: str | None = None,
    cli: bool = True,
    resume: str = RESUME_FIXED,
) -> Any:
    """A config field with everything the command line needs: ``help``, ``choices`` or a range
    [``low``, ``high``] (``low_open``/``high_open``: that bound excluded), its ``flag`` (default: ``--`` + the
    name with dashes), ``cli=False`` for the places that cli.py sets itself. ``resume``: what ``iic train
    --resume`` allows: fixed (the run's recipe), free (where and how it runs) or extend (``epochs``: more of
    them continue the run)."""
    meta = dict(
        help=help,
        choices=choices,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        flag=flag,
        cli=cli,
        resume=resume,
    )
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One command-line option generated from a config field."""

    path: str  # where it lives: "epochs", "iic.K"
    name: str  # its keyword (the flag without dashes, dashes as underscores): "epochs", "K", "batch_size"
    flag: str  # "--epochs", "--K"
    kind: type  # int, float, str, bool, tuple (of floats), Path
    default: Any
    help: str
    choices: tuple[str, ...] | None
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    resume: str
    cli: bool


def _kind(annotation: Any) -> type:
    text = str(annotation)
    for kind in (bool, int, float, str):
        if annotation is kind or text == kind.__name__:
            return kind
    if text.startswith("tuple"):
        return tuple
    if "Path" in text:
        return Path
    raise TypeError(f"no command-line kind for {annotation!r}")


def options_of(cls: type, prefix: str = "") -> list[Option]:
    """The `Option` of every field of ``cls`` declared with `option` (nested sections: their own fields)."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += options_of(hints[f.name], f"{prefix}{f.name}.")
            continue
        if "help" not in f.metadata:
            continue
        m = f.metadata
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        out.append(
            Option(
                prefix + f.name,
                flag.lstrip("-").replace("-", "_"),
                flag,
                _kind(hints[f.name]),
                f.default,
                m["help"],
                m["choices"],
                m["low"],
                m["high"],
                m["low_open"],
                m["high_open"],
                m["resume"],
                m["cli"],
            )
        )
    return out


def check_option(opt: Option, value: Any) -> None:
    """Refuse a value outside ``opt``'s choices or range, in the words every command uses."""
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{opt.flag} {value!r} is unknown; choose one of {', '.join(opt.choices)}")
    if opt.kind in (int, float) and not isinstance(value, bool):
        too_low = opt.low is not None and (value <= opt.low if opt.low_open else value < opt.low)
        too_high = opt.high is not None and (value >= opt.high if opt.high_open else value > opt.high)
        if too_low or too_high:
            raise ConfigError(f"{opt.flag} {value} is out of range; need {range_text(opt)}")


def range_text(opt: Option) -> str:
    """``0 <= x < 1``, ``x > 0``, ``x >= 2``: an option's range as its messages and --help say it."""
    low = f"{opt.low:g} {'<' if opt.low_open else '<='} " if opt.low is not None else ""
    high = f" {'<' if opt.high_open else '<='} {opt.high:g}" if opt.high is not None else ""
    return f"{low}x{high}"
