"""The command-line surface itself: --version, and help text with defaults for every option."""

from __future__ import annotations

import importlib.metadata

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
    end = next(
        (j for j in range(at + 1, len(lines)) if lines[j].lstrip().startswith("-") or not lines[j].strip()),
        len(lines),
    )
    return " ".join(line.strip() for line in lines[at:end])


def test_presets_are_files_listed_and_shown_as_train_resolves_them(tmp_path):
    """`iic presets`: one line per preset file with its description; `--show NAME` prints the full resolved
    config as TOML, which `iic train --config` reads back to the same config, and which `iic train --preset
    NAME --print-config` prints too."""
    from iic.model.config import build_config, preset_names

    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == preset_names() and len(lines) >= 13
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # every preset describes itself
    shown = {}
    for name in preset_names():
        r = CliRunner().invoke(main, ["presets", "--show", name])
        assert r.exit_code == 0, r.output
        shown[name] = r.output
        path = tmp_path / f"{name}.toml"
        path.write_text(r.output)
        assert build_config(config_file=path) == build_config(name), name
        printed = CliRunner().invoke(
            main,
            ["train", "--preset", name, "--data", "data/ucf101", "--out", "data/runs/iic", "--print-config"],
        )
        assert printed.exit_code == 0 and printed.stdout == "".join(r.output.splitlines(True)[1:]), name
    # spot checks against the paper's table (docs/method.md), independent of the code's spelling
    assert 'view2 = "flow-u"' in shown["r3d-flowu-repeat"] and 'neg = "repeat"' in shown["r3d-flowu-repeat"]
    assert 'neg = "none"' in shown["cmc-r3d-res"] and "K = 1024" in shown["cmc-r3d-res"]
    assert 'method = "dualvar"' in shown["dualvar-r21d"] and 'model = "r21d-10"' in shown["dualvar-r21d"]
    assert "[iic]" not in shown["dualvar-r21d"] and "[dualvar]" in shown["dualvar-r21d"]


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


def _other_value(opt):
    """A valid value of ``opt`` other than its default, as typed on the command line and as resolved."""
    if opt.kind is bool:
        return ([f"--no-{opt.flag[2:]}"] if opt.default else [opt.flag]), not opt.default
    if opt.choices is not None:
        value = next(c for c in opt.choices if c != opt.default)
        return [opt.flag, value], value
    if opt.kind is tuple:
        return [opt.flag, "0.5,0.75"], (0.5, 0.75)
    if opt.name == "device":
        return [opt.flag, "cpu"], "cpu"
    value = opt.default + 1 if opt.kind is int else round(opt.default * 1.5, 6)
    if opt.high is not None and value >= opt.high:
        value = round((opt.default + (opt.low or 0)) / 2, 6)
    return [opt.flag, str(value)], value


def test_every_generated_train_option_reaches_the_config(tmp_path):
    """Each option of `iic train` that the config declares is generated, parsed into its field and shown
    resolved by --print-config (the one place an option is declared is the one it acts from)."""
    import sys

    from iic.model.config import OPTIONS, flat_dict

    tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")
    seen = []
    for opt in [o for o in OPTIONS if o.cli]:
        args, value = _other_value(opt)
        r = CliRunner().invoke(
            main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args, "--print-config"]
        )
        assert r.exit_code == 0, (opt.flag, r.output)
        resolved = flat_dict(tomllib.loads(r.stdout))
        got = resolved[opt.path]
        assert (tuple(got) if isinstance(got, list) else got) == value, (opt.flag, got, value)
        seen.append(opt.flag)
    assert len(seen) >= 35


def test_every_option_is_named_in_a_test():
    """A guard for new options: each long spelling of every `iic` option appears, quoted, in a test, or is one
    of `iic train`'s generated options (the test above drives each of them)."""
    from pathlib import Path

    from iic.model.config import OPTIONS

    generated = {o.flag for o in OPTIONS if o.cli} | {f"--no-{o.flag[2:]}" for o in OPTIONS if o.kind is bool}
    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [
        f"{' '.join(path)} {opt}"
        for path, cmd in commands(main, ("iic",))
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in param.opts + param.secondary_opts
        if opt.startswith("--") and f'"{opt}"' not in text and not (path[-1] == "train" and opt in generated)
    ]
    assert not missing, f"options no test names: {missing}"
