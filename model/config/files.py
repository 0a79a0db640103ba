"""Presets (``model/presets/*.toml``), config files, resolving a run's config (`build_config`) and what a
resumed run may change."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI (setup.cfg)
    import tomli as tomllib

from .options import RESUME_EXTEND, RESUME_FREE
from .run import OPTIONS, OPTIONS_BY_NAME, OPTIONS_BY_PATH, TrainConfig, unused_option
from .vocab import ConfigError

PRESET_DIR = Path(__file__).parent.parent / "presets"
# What --method X alone means: the method's own recipe under the preset and the flags.
METHOD_DEFAULTS: dict[str, dict] = {"dualvar": dict(view2="rgb", stride=4, flip=True)}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return path


def read_config_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The values of a TOML config file, on top of its ``base`` preset (recursively): top-level options and
    sections (``[iic]``, ``[dualvar]``, ``[simclr]``) by field name; ``description`` is dropped."""
    path = Path(path)
    if path in _seen:
        raise ConfigError(f"{path}: its base presets form a loop")
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    base = values.pop("base", None)
    values.pop("description", None)
    if base is not None:
        values = merge(read_config_file(preset_path(base), (*_seen, path)), values)
    return values


def describe_file(path: Path) -> str:
    """A config file's ``description``."""
    return str(tomllib.loads(Path(path).read_text()).get("description", ""))


def merge(base: Mapping, top: Mapping) -> dict:
    """``top`` over ``base``, sections merged field by field."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, Mapping) else v
    return out


def _nest(overrides: Mapping) -> dict:
    """Flat overrides (option names ``K``, paths ``iic.K``, section dicts ``dualvar={...}``, places ``data``,
    ``out``) -> the nested layout of `TrainConfig.to_dict`."""
    nested: dict = {}
    places = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            nested = merge(nested, {key: value})
        elif key in OPTIONS_BY_NAME or "." in key:
            path = OPTIONS_BY_NAME[key].path if key in OPTIONS_BY_NAME else key
            section, _, name = path.rpartition(".")
            nested = merge(nested, {section: {name: value}} if section else {name: value})
        elif key in places:
            nested[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}")
    return nested


def build_config(preset: str | None = None, config_file: Path | None = None, **overrides: Any) -> TrainConfig:
    """Resolve a run's config: defaults, the method's defaults, the preset (or config file), then every
    override that is not None (option names as the flags', e.g. ``neg="shuffle"``, ``epochs=3``; sections as
    dicts, e.g. ``dualvar={"tau_clip": 0.1}``); validated."""
    if preset is not None and config_file is not None:
        raise ConfigError("--preset and --config exclude each other (a config file may name a base preset)")
    base = (
        read_config_file(preset_path(preset) if preset is not None else config_file)
        if (preset or config_file)
        else {}
    )
    given = _nest({k: v for k, v in overrides.items() if v is not None})
    method = given.get("method", base.get("method", "iic"))
    values = merge(merge(METHOD_DEFAULTS.get(method, {}), base), given)
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in {config_file or preset or 'the overrides'}")
    if method == "dualvar" and values.get("iic"):  # given, even at its default: the method would ignore it
        raise unused_option("iic", next(iter(values["iic"])))
    try:
        return TrainConfig.from_dict(values).validate()
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None


def flat_dict(d: Mapping, prefix: str = "") -> dict:
    """``{"iic": {"K": 0}}`` -> ``{"iic.K": 0}``: the dotted names that `refuse_changes` reports."""
    out = {}
    for k, v in d.items():
        out.update(flat_dict(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def recipe_changes(saved: TrainConfig, asked: TrainConfig) -> list[str]:
    """Where ``asked`` differs from ``saved`` in a fixed option (the run's recipe): ``--neg shuffle (the
    run's: repeat)``, or ``dualvar.tau_clip 0.1 (...)`` for an option without a flag of its own."""
    old, new = flat_dict(saved.to_dict()), flat_dict(asked.to_dict())
    loose = resume_paths(RESUME_FREE) | resume_paths(RESUME_EXTEND)
    out = []
    for path in sorted(set(old) | set(new)):
        if path in loose or old.get(path) == new.get(path):
            continue
        opt = OPTIONS_BY_PATH.get(path)
        out.append(f"{opt.flag if opt else path} {_text(new.get(path))} (the run's: {_text(old.get(path))})")
    return out


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def resume_paths(kind: str) -> set[str]:
    """The dotted paths of the options whose ``resume`` is ``kind``."""
    return {o.path for o in OPTIONS if o.resume == kind}


def to_toml(d: Mapping, comment: str = "") -> str:
    """A config dict as a TOML file (`read_config_file` reads it back to the same config)."""
    scalars = [(k, v) for k, v in d.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, Mapping)]
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for name, table in tables:
        lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))
    raise ConfigError(f"cannot write {v!r} to TOML")
