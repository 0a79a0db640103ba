"""Write docs/cli.md, the command-line reference, from the click commands themselves.

python docs/generate_cli.py           # rewrite docs/cli.md
python docs/generate_cli.py --check   # exit 1 if docs/cli.md is not what the commands say (a test runs it)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from iic.cli import DEFAULT_DATA, main, prep

OUT = Path(__file__).with_name("cli.md")
_DEFAULT = re.compile(r"\s*\[default: ([^\]]*)\]\.?\s*$")


def _values(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{c}`" for c in kind.choices)
    if isinstance(kind, click.types._NumberRangeBase):
        return f"{kind.name} {kind._describe_range()}".replace("<", "&lt;").replace(">", "&gt;")
    if getattr(param, "is_flag", False):
        return "flag"
    return kind.name.lower()


def _row(param: click.Option) -> str:
    names = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
    help_text = (param.help or "").replace("\n", " ")
    found = _DEFAULT.search(help_text)
    if found:
        default, help_text = found.group(1), help_text[: found.start()]
    elif isinstance(param.show_default, str):
        default = param.show_default
    elif param.is_flag and not param.secondary_opts:
        default = "off"
    elif param.default is not None and not param.multiple:
        default = str(param.default)
        if default == str(DEFAULT_DATA) or default.startswith(f"{DEFAULT_DATA}/"):  # $IIC_DATA, else ./data
            default = "<data root>" + default[len(str(DEFAULT_DATA)) :]
    else:
        default = ""
    cells = [names, _values(param), f"`{default}`" if default else "", help_text.replace("|", "\\|")]
    return "| " + " | ".join(cells) + " |"


def _commands(group: click.Group, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


def reference() -> str:
    """The whole of docs/cli.md."""
    lines = [
        "# Command-line reference",
        "",
        "Generated from the commands by `python docs/generate_cli.py`; a test fails when this file is stale.",
        "Exit statuses of every command: 0 done, 1 a data or runtime error, 2 a usage error, 3 done with",
        "failures listed, 130 interrupted. Messages go to stderr, results to stdout.",
    ]
    for root, name in ((prep, "iic-prep"), (main, "iic")):
        for path, cmd in _commands(root, (name,)):
            lines += [
                "",
                f"## `{' '.join(path)}`",
                "",
                (cmd.help or "").strip().split("\n\n")[0].replace("\n", " "),
            ]
            rest = "\n\n".join((cmd.help or "").strip().split("\n\n")[1:]).replace("\n", " ").strip()
            if rest:
                lines += ["", rest]
            options = [p for p in cmd.params if isinstance(p, click.Option)]
            if options:
                lines += ["", "| option | values | default | what it does |", "|---|---|---|---|"]
                lines += [_row(p) for p in options]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = reference()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python docs/generate_cli.py", file=sys.stderr)
            sys.exit(1)
    else:
        OUT.write_text(text)
