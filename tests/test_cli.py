"""The command-line surface itself: --version, and help text with defaults for every option."""
from __future__ import annotations

import importlib.metadata
import re

import click
import pytest
from click.testing import CliRunner

from iic.cli import main, prep


def commands(group: click.Group, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, group)]
    for name, cmd in group.commands.items():
        out += commands(cmd, path + (name,)) if isinstance(cmd, click.Group) else [(path + (name,), cmd)]
    return out


ALL = commands(prep, ("iic-prep",)) + commands(main, ("iic",))


@pytest.mark.parametrize("group,name", [(prep, "iic-prep"), (main, "iic")])
def test_version_is_the_installed_distributions(group, name):
    result = CliRunner().invoke(group, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{name}, version {importlib.metadata.version('iic')}\n"


@pytest.mark.parametrize("path,cmd", ALL, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_option_has_help_and_shows_its_default(path, cmd):
    root = prep if path[0] == "iic-prep" else main
    result = CliRunner().invoke(root, [*path[1:], "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    for param in cmd.params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
        flag = param.is_flag and not param.secondary_opts
        if param.default is not None and not (flag or param.multiple or param.required):
            entry = help_entry(result.output, param.opts[0])
            assert "[default: " in entry, f"{' '.join(path)} {param.opts[0]} hides its default: {entry}"


def help_entry(text: str, opt: str) -> str:
    """The --help lines of option ``opt`` (its first line and the indented continuation lines), joined."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().split(" ")[0].rstrip(",") == opt)
    end = next((j for j in range(at + 1, len(lines)) if lines[j].lstrip().startswith("-") or not lines[j].strip()),
               len(lines))
    return " ".join(line.strip() for line in lines[at:end])


def test_presets_lists_every_preset_with_its_resolved_fields():
    """`iic presets`: one line per preset, in order, naming every field the preset sets with the value that
    `iic train --preset NAME` then trains with (build_config resolves method defaults under the preset)."""
    from iic.model.config import PRESETS, build_config

    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    for line in lines:
        name, fields = line.split(maxsplit=1)
        shown = dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", fields))  # "milestones=(0.5, 0.75)" is one value
        assert list(shown) == list(PRESETS[name]), name  # every field of the preset, none invented
        cfg = build_config(name)
        for key, text in shown.items():
            assert text == str(getattr(cfg, key)), (name, key)
    # spot checks against the paper's table (REFERENCE.md section 1), independent of the code's spelling
    assert "view2=flow-u neg=repeat" in next(line for line in lines if line.startswith("r3d-flowu-repeat "))
    assert "neg=none" in next(line for line in lines if line.startswith("cmc-r3d-res "))
    assert "method=dualvar model=r21d-10" in next(line for line in lines if line.startswith("dualvar-r21d "))


def test_one_meaning_per_path_option():
    """--data is a processed dataset folder, --data-root the data root (extract and demo still take their old
    spelling), --out what a command writes; the groups' help says so and names $IIC_DATA."""
    for path, cmd in ALL:
        for param in cmd.params:
            if isinstance(param, click.Option) and "--data" in param.opts and "--data-root" not in param.opts:
                assert "Processed dataset folder" in param.help, (path, param.help)
            if isinstance(param, click.Option) and "--data-root" in param.opts:
                assert param.opts[0] == "--data-root" and "$IIC_DATA" in param.help, (path, param.opts)
    roots = {path[-1]: cmd for path, cmd in ALL if any("--data-root" in p.opts for p in cmd.params)}
    assert sorted(roots) == ["demo", "extract"]
    for group in (prep, main):
        text = CliRunner().invoke(group, ["--help"], terminal_width=200).output
        assert "$IIC_DATA" in text and "--data-root the data root" in text, text
