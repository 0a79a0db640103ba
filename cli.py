"""Command line: ``iic-prep`` (offline stage) and ``iic`` (training core).

Each command parses and validates its flags, builds one frozen config and calls one library function.
Expected failures (bad input, missing data, a busy folder) end in one ``Error:`` line on stderr and a non-zero
exit status, never a traceback: 0 done, 1 a data or runtime error, 2 a usage error, 3 done with failures
listed, 130 interrupted (`USER_ERRORS`, `Group`). Messages go to stderr, results to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from .model.config import (
    BACKBONES,
    EVAL_VIEWS,
    FEATURES,
    OPTIONS,
    OPTIONS_BY_NAME,
    Option,
    build_config,
)  # torch-free
from .pipeline.datasets import DATASETS  # no OpenCV, h5py or joblib
from .pipeline.names import BACKENDS, FLOW_METHODS, SYNTH_CAMERAS  # no OpenCV, h5py or joblib

DEFAULT_DATA = Path(os.environ.get("IIC_DATA", "data"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


# The exit statuses of every command (README, "Exit statuses"): 0 done, 1 a data or runtime error, 2 a usage
# error (click's own, and every validation of options), 3 done with failures listed, 130 interrupted. The
# errors the library raises for a user to read, by module: they end in one `Error:` line on stderr with their
# status; anything else is a bug and keeps its traceback. A module that was never imported raised nothing.
USER_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("iic.model.config", "ConfigError", 2),
    ("iic.model.evaluation.features", "AmbiguousRun", 2),
    ("iic.model.checkpoint", "CheckpointError", 1),
    ("iic.model.data.clips", "DataError", 1),
    ("iic.model.distributed", "DeviceError", 1),
    ("iic.model.run.loop", "TrainingError", 1),
    ("iic.pipeline.format", "FormatError", 1),
    ("builtins", "OSError", 1),
)


def exit_status(err: BaseException) -> int | None:
    """The exit status of an error a user is meant to read (`USER_ERRORS`), None for a bug."""
    for module, name, status in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return status
    return None


class Group(click.Group):
    """A command group that keeps the exit-status contract for all of its commands: one `Error:` line and its
    status for the library's user errors, and for Ctrl-C status 130 with one line saying how to resume (a
    command puts that in ``ctx.meta["resume"]``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            hint = ctx.meta.get("resume", "finished work is kept; the same command continues it")
            click.echo(f"Interrupted: {hint}.", err=True)
            ctx.exit(130)
        except Exception as err:
            status = exit_status(err)
            if status is None:
                raise
            lines = [line for line in str(err).strip("'\"").splitlines() if line.strip()]
            click.echo(f"Error: {lines[0] if lines else type(err).__name__}", err=True)
            ctx.exit(status)


def _dataset_folder(dataset: str | None) -> Path:
    """``<data root>/<dataset>``; without a name, the data root's one processed dataset (a folder holding a
    dataset.json), else ucf101 (whose absence the command then reports)."""
    if dataset is not None:
        return DEFAULT_DATA / dataset
    found = sorted(p.parent.name for p in DEFAULT_DATA.glob("*/dataset.json"))
    if len(found) > 1:
        raise click.UsageError(
            f"several processed datasets under {DEFAULT_DATA} ({', '.join(found)}): pass --dataset"
        )
    return DEFAULT_DATA / (found[0] if found else "ucf101")


def _parse_size(ctx, param, value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        if h < 16 or w < 16:
            raise ValueError
        return h, w
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW with both at least 16, e.g. 128x171") from None


def _parse_frame_size(ctx, param, value: str) -> tuple[int, int] | int:
    """``HxW`` (every video resized to it) or ``S`` (short side S, the aspect ratio kept)."""
    if "x" in value.lower():
        return _parse_size(ctx, param, value)
    try:
        short = int(value)
        if short < 16:
            raise ValueError
        return short
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither HxW (e.g. 128x171) nor a short side of at least 16 (e.g. 128)"
        ) from None


def _stage_data_options(f):
    """--dataset and --data of a stage that reads a processed dataset (flow, camera)."""
    f = click.option(
        "--data",
        type=click.Path(path_type=Path),
        default=None,
        help="Processed dataset folder [default: <data root>/<dataset>].",
    )(f)
    return click.option("--dataset", default="ucf101", help="Used for the default --data.")(f)


# options that several commands take alike
_STORED_DATA = click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Processed dataset folder [default: the data root's one processed dataset, else "
    "<data root>/ucf101].",
)
_TEST_CLIPS = click.option("--clips", type=click.IntRange(1), default=10, help="Test clips per video.")


def _parallel_options(f):
    f = click.option("--scheduler", default=None, help="Dask scheduler address (with --backend dask).")(f)
    f = click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="loky",
        help="joblib backend: local processes or a Dask cluster.",
    )(f)
    f = click.option(
        "--workers",
        type=click.IntRange(1),
        default=os.cpu_count() or 1,
        show_default="the number of cores",
        help="Parallel shard writers (one process each).",
    )(f)
    return f


def _parallel_config(workers: int, backend: str, scheduler: str | None):
    from .pipeline.parallel import ParallelConfig

    if backend == "dask" and not scheduler:
        raise click.BadParameter("--backend dask needs --scheduler ADDRESS", param_hint="--scheduler")
    if scheduler and backend != "dask":
        raise click.BadParameter("--scheduler is only used with --backend dask", param_hint="--scheduler")
    return ParallelConfig(workers=workers, backend=backend, scheduler=scheduler)


# --------------------------------------------------------------------------------------------------------
# iic-prep


# Every group shows each option's default in --help (subcommands inherit the context setting).
CONTEXT = dict(show_default=True)


def _version_option(prog_name: str):
    """``--version``: the installed distribution's version (``importlib.metadata.version("iic")``)."""
    return click.version_option(package_name="iic", prog_name=prog_name, help="Show the version and exit.")


@click.group(cls=Group, context_settings=CONTEXT)
@_version_option("iic-prep")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def prep(verbose: bool) -> None:
    """Offline stage: synthetic data, frames, optical flow, checks.

    Paths default under the data root: $IIC_DATA, else ./data. --data is a processed dataset folder
    (<data root>/<dataset>), --data-root the data root, --out what a command writes; --workers are processes.
    """
    _setup_logging(verbose)


@prep.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA / "raw" / "synth",
    help="Folder to write the UCF101-layout dataset into.",
)
@click.option(
    "--classes",
    type=click.IntRange(1),
    default=8,
    help="Motion classes (the first N; 8 = four pairs that are each other's time reversal).",
)
@click.option("--per-class", type=click.IntRange(1), default=45, help="Videos per class.")
@click.option(
    "--groups",
    type=click.IntRange(3),
    default=None,
    help="Groups per class (videos of a group share their appearance) [default: one video per group].",
)
@click.option("--frames", type=click.IntRange(1), default=40, help="Frames per video.")
@click.option("--size", callback=_parse_size, default="96x128", help="Frame size HxW (even).")
@click.option(
    "--seed", type=click.IntRange(0), default=0, help="Seed of the generator (same seed, same videos)."
)
@click.option(
    "--camera",
    type=click.Choice(SYNTH_CAMERAS),
    default="still",
    help="How the scene is filmed, the same law for every class (px at 96x128, scaled with the size): "
    "still; shake = shifted by 0-4 px per axis at random every frame; pan = drifting 1-2 px a frame in a "
    "random direction; zoom = scaled about the centre by 0.4-1% a frame; rotate = turning 0.4-1.2 degrees "
    "a frame; handheld = a gentle mix of all four.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset made with other settings.")
def synth(out, classes, per_class, groups, frames, size, seed, camera, overwrite) -> None:
    """Generate the synthetic motion-class dataset (UCF101 layout, real AVI files)."""
    from .pipeline.synth import SynthConfig, SynthConfigError, SynthExistsError, generate

    given = {
        "classes": classes,
        "per_class": per_class,
        "groups": groups,
        "frames": frames,
        "size": f"{size[0]}x{size[1]}",
        "seed": seed,
        "camera": camera,
    }
    try:
        cfg = SynthConfig(
            out=out,
            classes=classes,
            per_class=per_class,
            groups=groups,
            frames=frames,
            height=size[0],
            width=size[1],
            seed=seed,
            camera=camera,
            overwrite=overwrite,
        )
    except SynthConfigError as err:  # flags SynthConfig refuses (odd size, too many classes): usage
        _fail(f"{_synth_options(err.fields, given)}: {err.reason}", 2)
    try:
        report = generate(cfg)
    except SynthExistsError as err:
        _fail(
            f"{err.out} holds a dataset made with another config ({_synth_differences(err.differences)}): "
            "pass --overwrite to replace it"
        )
    except (ValueError, OSError) as err:
        _fail(_one_line(err))
    # beside the real datasets, never in UCF101's place
    click.echo(
        f"{report.videos} videos of {len(report.class_names)} classes in {report.out} "
        f"(extract with: iic-prep extract --dataset ucf101 --root {report.out} --name synth)"
    )


# SynthConfig fields -> the `iic-prep synth` option that sets them
_SYNTH_OPTIONS = {
    "classes": "--classes",
    "per_class": "--per-class",
    "groups": "--groups",
    "frames": "--frames",
    "height": "--size",
    "width": "--size",
    "seed": "--seed",
    "camera": "--camera",
}


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (HDF5's messages span lines)."""
    return " ".join(str(err).strip("'\"").split()) or type(err).__name__


def _synth_options(fields: tuple[str, ...], given: dict) -> str:
    """``--per-class 2`` for the options behind SynthConfig ``fields``: those the user passed, then those left
    at their default in parentheses."""
    ctx = click.get_current_context()
    passed, default = [], []
    for opt in dict.fromkeys(_SYNTH_OPTIONS.get(f, f) for f in fields):
        name = opt.lstrip("-").replace("-", "_")
        text = f"{opt} {given[name]}" if name in given else opt
        source = ctx.get_parameter_source(name) if name in given else None
        (default if source is click.core.ParameterSource.DEFAULT else passed).append(text)
    head = " ".join(passed or default)
    return head + (f" (with {' '.join(default)}, the default)" if passed and default else "")


def _synth_differences(differences: dict[str, tuple]) -> str:
    """``--frames 40, asked 20; --size 96x128, asked 64x64`` from SynthConfig field -> (found, asked)."""
    ctx = click.get_current_context()
    found = {k: a for k, (a, _) in differences.items()}
    asked = {k: b for k, (_, b) in differences.items()}
    if {"height", "width"} & set(differences):
        size = [differences.get(k, (None, None)) for k in ("height", "width")]
        found["size"] = "x".join(str(a) for a, _ in size if a is not None)
        asked["size"] = "x".join(str(b) for _, b in size if b is not None)
    groups_follow = ctx.get_parameter_source("groups") is click.core.ParameterSource.DEFAULT
    out = []
    for key in found:
        if key in ("height", "width") or (key == "groups" and "per_class" in found and groups_follow):
            continue  # shown as --size; groups that follow --per-class (one video each) are shown by it
        name = "--size" if key == "size" else _SYNTH_OPTIONS.get(key, key)
        out.append(f"{name} {found[key]}, asked {asked[key]}")
    return "; ".join(out)


@prep.command()
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default="ucf101",
    help="Layout of --root (folder: one sub-folder per class; kinetics*: the official CSVs).",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder the official archives were unpacked into [default: <data root>/raw/<dataset>].",
)
@click.option(
    "--data-root",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA,
    help="The data root (as everywhere: $IIC_DATA, else ./data); the dataset goes to <data root>/<name>.",
)
@click.option(
    "--name",
    default=None,
    help="Folder of the dataset under the data root, e.g. synth for the synthetic videos "
    "[default: the --dataset layout]. Data extracted with other settings is never replaced "
    "without --overwrite: --name extracts beside it.",
)
@click.option(
    "--split", type=click.IntRange(1, 3), default=1, help="Official split whose train/test lists are read."
)
@click.option(
    "--size",
    callback=_parse_frame_size,
    default="128x171",
    help="Frame size HxW, or a short side S: the shorter side becomes S, the other keeps the aspect (even).",
)
@click.option("--quality", type=click.IntRange(50, 100), default=90, help="JPEG quality.")
@click.option(
    "--subsampling", type=click.Choice(["420", "444"]), default="420", help="JPEG chroma subsampling."
)
@click.option(
    "--store-residuals",
    is_flag=True,
    help="Also store a residual stream (default: residuals are derived from the stored frames when read).",
)
@click.option("--shard-size", type=click.IntRange(1), default=64, help="Videos per shard.")
@click.option(
    "--subset",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Kinetics: a file of class names or of videos (YouTube ids) restricting the set, "
    "e.g. Mini-Kinetics-200.",
)
@click.option(
    "--unlabelled",
    is_flag=True,
    help="Kinetics: also extract test.csv, as unlabelled videos (label -1, in neither the train nor the "
    "test list).",
)
@_parallel_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Redo every shard instead of resuming; replaces data extracted with other settings.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Also verify every kept shard's checksums (reads them all) and rewrite the damaged ones.",
)
def extract(
    dataset,
    root,
    out,
    name,
    split,
    size,
    quality,
    subsampling,
    store_residuals,
    shard_size,
    subset,
    unlabelled,
    workers,
    backend,
    scheduler,
    overwrite,
    repair,
) -> None:
    """Decode every video of the split's lists into HDF5 shards of JPEG RGB frames.

    Residual frames are derived from the stored RGB frames when read; --store-residuals also stores them.
    """
    from .pipeline.datasets import DatasetLayoutError, DatasetOptionError
    from .pipeline.extract import ExtractConfig
    from .pipeline.extract import extract as run
    from .pipeline.lock import LockedError

    try:
        cfg = ExtractConfig(
            dataset=dataset,
            root=root or out / "raw" / dataset,
            out=out,
            split=split,
            size=size,
            quality=quality,
            subsampling=subsampling,
            store_residuals=store_residuals,
            shard_size=shard_size,
            subset=subset,
            unlabelled=unlabelled,
            parallel=_parallel_config(workers, backend, scheduler),
            overwrite=overwrite,
            repair=repair,
            name=name,
        )
    except ValueError as err:  # a --name that is not a folder name
        _fail(_one_line(err), 2)
    try:
        summary = run(cfg)
    except DatasetOptionError as err:  # options the layout does not take
        _fail(_one_line(err), 2)
    except (DatasetLayoutError, LockedError, OSError) as err:  # also FileExistsError, StorageError
        _fail(_one_line(err))
    _stage_summary(summary)


def _stage_summary(summary) -> None:
    """A stage's summary on stdout, the videos that failed on stderr; exit 0, or 3 when some failed."""
    click.echo(summary.head())
    for line in summary.failure_lines():
        click.echo(line, err=True)
    sys.exit(summary.exit_code)


@prep.command()
@_stage_data_options
@click.option(
    "--method",
    type=click.Choice(FLOW_METHODS),
    default="tvl1",
    help="tvl1 = OpenCV DualTVL1 defaults (reference); tvl1-fast = epsilon 0.05 (~8x faster); dis, "
    "farneback; "
    "tvl1-torch = the same TV-L1 in PyTorch, batched, on --device (CPU: --workers processes of one thread; "
    "CUDA: one process).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="tvl1-torch only: where to compute (auto = CUDA if available)  [default: auto]",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=None,
    help="tvl1-torch only: most frame pairs per call (capped from the frame size and free memory) "
    "[default: 2 on the CPU, as many as fit on a GPU]",
)
@click.option(
    "--no-compile",
    "no_compile",
    is_flag=True,
    default=None,
    help="tvl1-torch only: run the eager torch code instead of the compiled, fused kernels (for debugging; "
    "the same flow up to float rounding).",
)
@click.option(
    "--bound",
    type=click.FloatRange(0, min_open=True),
    default=20.0,
    help="Clip displacements to +-BOUND px before uint8 quantisation.",
)
@_parallel_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Recompute all flow instead of resuming; replaces flow computed with other settings.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Also verify every kept flow shard's checksums (reads them all) and recompute the damaged ones.",
)
def flow(
    dataset, data, method, device, batch, no_compile, bound, workers, backend, scheduler, overwrite, repair
) -> None:
    """Dense optical flow between consecutive stored frames into flow shards (N frames -> N-1 pairs)."""
    from .pipeline.flow import FlowStageConfig, compute
    from .pipeline.flowcalc import TORCH_METHODS, FlowConfig, FlowDeviceError
    from .pipeline.format import FormatError
    from .pipeline.lock import LockedError

    if method not in TORCH_METHODS:
        for name, value in (("--device", device), ("--batch", batch), ("--no-compile", no_compile)):
            if value is not None:
                raise click.BadParameter(f"{name} is only used with --method tvl1-torch", param_hint=name)
    data = data or DEFAULT_DATA / dataset
    cfg = FlowStageConfig(
        data=data,
        flow=FlowConfig(method, bound, device=device or "auto", batch=batch, compile=not no_compile),
        parallel=_parallel_config(workers, backend, scheduler),
        overwrite=overwrite,
        repair=repair,
    )
    try:
        summary = compute(cfg)
    except (FormatError, LockedError, FlowDeviceError, OSError) as err:  # also FileExistsError, StorageError
        _fail(_one_line(err))
    _stage_summary(summary)


@prep.command()
@_stage_data_options
@_parallel_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Estimate every video again; replaces estimates made with other settings.",
)
def camera(dataset, data, workers, backend, scheduler, overwrite) -> None:
    """The camera's motion between consecutive stored frames (2x3 affines), for the res-aligned view."""
    from .pipeline.camera import CameraStageConfig, compute
    from .pipeline.format import FormatError
    from .pipeline.lock import LockedError

    cfg = CameraStageConfig(
        data=data or DEFAULT_DATA / dataset,
        parallel=_parallel_config(workers, backend, scheduler),
        overwrite=overwrite,
    )
    try:
        summary = compute(cfg)
    except (FormatError, LockedError, OSError) as err:  # also FileExistsError, StorageError
        _fail(_one_line(err))
    _stage_summary(summary)


@prep.command()
@click.option(
    "--video", "video_id", required=True, help="Video id (manifest `id`, e.g. MoveLeft/v_MoveLeft_g01_c01)."
)
@_STORED_DATA
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Picture to write; its suffix names the format: .png, .jpg/.jpeg, .pdf or .svg.",
)
@click.option("--columns", type=click.IntRange(1, 32), default=8, help="Frames shown.")
def show(video_id, data, out, columns) -> None:
    """Picture of a stored video: RGB frames, residuals (res-aligned too) and flow, frame indices labelled."""
    from .pipeline.format import FormatError
    from .pipeline.show import picture_format, show_video

    try:
        picture_format(out)
    except ValueError as err:
        _fail(str(err), 2)
    try:
        path = show_video(data or _dataset_folder(None), video_id, out, columns)
    except (FormatError, KeyError) as err:
        _fail(_one_line(err))
    except OSError as err:  # the picture cannot be written there
        _fail(f"cannot write {out}: {err.strerror or _one_line(err)}")
    click.echo(f"wrote {path}")


@prep.command()
@_STORED_DATA
def info(data: Path) -> None:
    """Summary of a processed dataset (warnings about it, such as stale flow, on stderr)."""
    from .pipeline.format import FormatError
    from .pipeline.info import info_report

    data = data or _dataset_folder(None)
    try:
        report = info_report(data)
    except FormatError as err:
        _fail(_one_line(err))
    for line in report.lines:
        click.echo(line)
    for line in report.warnings:
        click.echo(f"Warning: {line}", err=True)


@prep.command()
@_STORED_DATA
def check(data: Path) -> None:
    """Open every shard, verify counts against the manifest and every stored checksum, decode samples."""
    from .pipeline.info import check_report

    data = data or _dataset_folder(None)
    report = check_report(data)
    for line in report.problems + report.notes():  # problems and what could not be verified, with the verdict
        click.echo(line, err=True)
    if report.problems:
        _fail(f"{len(report.problems)} problem(s) in {data}")
    click.echo(f"{data}: ok")


@click.group(cls=Group, context_settings=CONTEXT)
@_version_option("iic")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Training and evaluation.

    Paths default under the data root: $IIC_DATA, else ./data. --data is a processed dataset folder
    (<data root>/<dataset>), --data-root the data root, --out what a command writes (a run folder, an
    evaluation folder); --workers are DataLoader worker processes.
    """
    _setup_logging(verbose)


# --------------------------------------------------------------------------------------------------------
# iic train: its options are generated from the config's declarations (model/config/)


class _Floats(click.ParamType):
    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers, e.g. 0.5,0.75", param, ctx)


def _click_type(opt: Option) -> click.ParamType | type:
    if opt.choices is not None:
        return click.Choice(opt.choices)
    if opt.kind in (int, float) and (opt.low is not None or opt.high is not None):
        kind = click.IntRange if opt.kind is int else click.FloatRange
        return kind(opt.low, opt.high, min_open=opt.low_open, max_open=opt.high_open)
    return {tuple: _Floats(), Path: click.Path(path_type=Path)}.get(opt.kind, opt.kind)


def _shown(value) -> str:
    return (
        ",".join(f"{v:g}" for v in value)
        if isinstance(value, tuple)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _config_options(f):
    """One click option per declared config option (`config.OPTIONS`): type, choices, range, help and the
    shown default all come from the declaration. The click default is None, so that what the user gave is
    told from what the preset or config file sets."""
    for opt in reversed([o for o in OPTIONS if o.cli]):
        decls = [f"{opt.flag}/--no-{opt.flag[2:]}"] if opt.kind is bool else [opt.flag]
        help_text = f"{opt.help} [default: {_shown(opt.default)}]"
        f = click.option(
            *decls,
            opt.name,
            type=None if opt.kind is bool else _click_type(opt),
            default=None,
            help=help_text,
            show_default=False,
        )(f)
    return f


def _new_run_folder(runs: Path, name: str) -> Path:
    """``<runs>/<name>-<date>-<time>``, with a counter when that exists: a new run never shares a folder."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = runs / stem, 1
    while out.exists():
        n += 1
        out = runs / f"{stem}-{n}"
    return out


def _resume_config(run: Path, recipe: dict, given: dict, data: Path | None, out: Path | None):
    """The config to continue the run in ``run`` with: its own, with what may change (where and how it runs,
    more
    --epochs) taken from ``given``. A recipe asked for (``recipe``: --preset, --config, --dualvar; and the
    options given) must be the run's own: every difference is refused, named."""
    from .model.config import RESUME_EXTEND, RESUME_FREE, ConfigError, recipe_changes
    from .model.run.resume import saved_run

    run = run.parent if run.is_file() else run
    if out is not None and out.resolve() != run.resolve():
        raise ConfigError(f"--out {out} and --resume {run} name different runs: pass only --resume")
    saved, finished = saved_run(run)  # finished: its epochs when it has a final.pt
    where = {"data": saved.data, "out": saved.out}
    asked = (
        build_config(**recipe, **where, **given)
        if recipe
        else build_config(**{**saved.to_dict(), **where, **given})
    )
    changed = recipe_changes(saved, asked)
    if changed:
        raise ConfigError(
            f"--resume continues {run} with its own recipe, which cannot change: {'; '.join(changed)}. "
            "Only where and how it runs, and --epochs, may; start a new run for another recipe"
        )
    if given.get("epochs", saved.epochs) < saved.epochs:
        raise ConfigError(
            f"--resume {run}: --epochs {given['epochs']} is fewer than the run's {saved.epochs}; "
            "a run can be extended, not shortened"
        )
    if finished is not None and given.get("epochs", saved.epochs) == finished:
        click.echo(f"{run} finished all {finished} epochs (--epochs N extends it)", err=True)
    kept = {k: v for k, v in given.items() if OPTIONS_BY_NAME[k].resume in (RESUME_FREE, RESUME_EXTEND)}
    return build_config(**{**saved.to_dict(), **kept, "out": run, "data": data or saved.data})


@main.command("train")
@click.option("--preset", default=None, help="A named recipe (`iic presets`); options given override it.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A TOML recipe file (the format of `iic presets --show NAME`); options given override it.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset name: the data folder is <data root>/<dataset> unless --data "
    "names it [default: the one processed dataset under the data root, else ucf101].",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Processed dataset folder [default: <data root>/<dataset>; with --resume the run's].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder [default: a new <data root>/runs/<preset or method>-<date>-<time>].",
)
@click.option(
    "--dualvar",
    "key_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="A DualVar or SimCLR option, repeatable: tau_clip, tau_tc, theta, w_clip, w_tc, clip_loss=moco, "
    "moco_k, jitter_p, blur_p, grayscale_p, ... (model/config/sections.py: DualVarConfig, "
    "SimCLRAugmentConfig).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Continue the run in this folder from its last checkpoint, with its own recipe (options that "
    "would change it are refused); --epochs N extends it (docs/method.md, schedules).",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config (TOML, for --config) and exit.")
@_config_options
def train_cmd(preset, config_file, dataset, data, out, key_values, resume, print_config, **options) -> None:
    """Self-supervised pretraining (IIC and its CMC baseline; DualVar with --method dualvar).

    The recipe is the defaults shown, then --preset or --config, then the options given.
    """
    from .model.config import parse_key_values, to_toml

    given = {name: value for name, value in options.items() if value is not None}
    if out is not None and out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} is a file, not a run folder", param_hint="--out")
    if resume is not None:
        recipe = (
            {"preset": preset, "config_file": config_file, **parse_key_values(key_values)}
            if (preset or config_file or key_values)
            else {}
        )
        cfg = _resume_config(
            resume, recipe, given, data or (_dataset_folder(dataset) if dataset else None), out
        )
    else:
        name = preset or (config_file.stem if config_file else given.get("method", "iic"))
        cfg = build_config(
            preset,
            config_file,
            data=data or _dataset_folder(dataset),
            out=out or _new_run_folder(DEFAULT_DATA / "runs", name),
            **parse_key_values(key_values),
            **given,
        )
    if print_config:
        click.echo(to_toml(cfg.to_dict()), nl=False)
        return
    from .model.run.train import train

    click.get_current_context().meta["resume"] = f"`iic train --resume {cfg.out}` continues it"
    if out is None and resume is None:
        click.echo(f"run folder: {cfg.out}", err=True)
    final = train(cfg, resume=resume is not None)
    click.echo(f"final checkpoint: {final}")


@main.command()
@click.option(
    "--show",
    "show_name",
    default=None,
    metavar="NAME",
    help="Print this preset's full resolved config (TOML, for `iic train --config`).",
)
def presets(show_name: str | None) -> None:
    """The named recipes (`iic train --preset NAME`), each a TOML file of model/presets/."""
    from .model.config import describe_file, preset_names, preset_path, to_toml

    if show_name is not None:
        cfg = build_config(show_name)
        click.echo(
            to_toml(cfg.to_dict(), comment=f"{show_name}: {describe_file(preset_path(show_name))}"), nl=False
        )
        return
    for name in preset_names():
        click.echo(f"{name:18} {describe_file(preset_path(name))}")


@main.command()
@click.option(
    "--data-root",
    "--data",
    "data",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA,
    help="The data root (as everywhere: $IIC_DATA, else ./data): synthetic videos, dataset and runs go "
    "under it.",
)
@click.option("--workers", type=click.IntRange(1), default=2, help="Preprocessing processes.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the presets' epochs.")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed of the data and of every run.")
@click.option(
    "--per-class",
    type=click.IntRange(3, 99),
    default=45,
    help="Synthetic videos per class (45: the benchmark; fewer for a quick look).",
)
@click.option("--frames", type=click.IntRange(16), default=40, help="Frames per synthetic video.")
@click.option(
    "--jobs",
    type=click.IntRange(0),
    default=0,
    help="Training runs side by side on CPU, one thread each (0 = one per core).",
)
@click.option(
    "--camera",
    type=click.Choice(SYNTH_CAMERAS),
    default="still",
    show_default=True,
    help="Film the synthetic videos with this camera; a moving one adds the camera stage, trains IIC and CMC "
    "on stabilised clips and retrieves with res-stable too (dataset synth-CAMERA, runs demo-CAMERA-*).",
)
def demo(data, workers, epochs, seed, per_class, frames, jobs, camera) -> None:
    """The main job on the synthetic dataset: data, flow, IIC/CMC/DualVar training, retrieval table.

    The CPU kernels are pinned at AVX2 (reproduce.py) so that the table is the same on any x86-64 CPU."""
    from .reproduce import pin_kernels

    pin_kernels()  # before torch loads its kernels (the demo's module imports it)
    from .demo import DemoConfig, run_demo

    click.get_current_context().meta["resume"] = "`iic demo` with the same options continues it"
    lines = run_demo(
        DemoConfig(
            data=data,
            workers=workers,
            epochs=epochs,
            seed=seed,
            per_class=per_class,
            frames=frames,
            jobs=jobs,
            camera=camera,
        ),
        progress=lambda line: click.echo(f"demo: {line}", err=True),
    )
    for line in lines:
        click.echo(line)


# --------------------------------------------------------------------------------------------------------
# iic eval


@main.group("eval")
def eval_group() -> None:
    """Evaluate a trained backbone: retrieval, fine-tuned recognition, linear / kNN probe.

    Each evaluation writes its own folder, named by what it evaluates (<run>/eval/<kind>-<data>-s<split>-...);
    --json prints the result as JSON on stdout instead of the table.
    """


def _source_options(f):
    f = click.option(
        "--seed", type=click.IntRange(0), default=0, help="Seed of --random-init (and of the probe)."
    )(f)
    f = click.option(
        "--crop", type=click.IntRange(8), default=None, help="Centre crop [default: the checkpoint's]."
    )(f)
    f = click.option(
        "--frames", type=click.IntRange(2), default=None, help="Frames per clip [default: the checkpoint's]."
    )(f)
    f = click.option(
        "--model",
        type=click.Choice(tuple(BACKBONES)),
        default=None,
        help="Backbone [default: the checkpoint's; with --random-init the run's].",
    )(f)
    f = click.option(
        "--random-init", is_flag=True, help="An untrained backbone of the same config: the baseline."
    )(f)
    f = click.option(
        "--run",
        type=click.Path(path_type=Path),
        default=None,
        help="Where to look for the run when --ckpt is not given [default: <data root>/runs].",
    )(f)
    f = click.option(
        "--ckpt",
        type=click.Path(path_type=Path),
        default=None,
        help="Checkpoint [default: the final.pt of the only run under --run].",
    )(f)
    return f


def _data_options(f):
    f = click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table."
    )(f)
    f = click.option("--device", callback=_check_device, default="auto", help="auto | cpu | cuda | cuda:N")(f)
    f = click.option("--workers", type=click.IntRange(0), default=2, help="DataLoader worker processes.")(f)
    f = click.option("--batch-size", type=click.IntRange(1), default=16, help="Clips per batch.")(f)
    f = click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=None,
        help="Output folder [default: <run>/eval/<kind>-<data>-s<split>-<input>...].",
    )(f)
    f = click.option(
        "--split",
        type=click.IntRange(1, 3),
        default=1,
        help="Official split: train list = gallery / training set, test list = queries / test set.",
    )(f)
    f = click.option(
        "--data",
        type=click.Path(path_type=Path),
        default=None,
        help="Processed dataset folder [default: <data root>/<dataset>, else the run's own data].",
    )(f)
    f = click.option(
        "--dataset",
        default=None,
        help="Dataset name (data folder <data root>/<dataset>) [default: the data the run was trained on].",
    )(f)
    return f


def _check_device(ctx, param, value: str) -> str:
    from .model.config import ConfigError, check_device

    try:
        return check_device(value)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None


def _source_config(ckpt, run, random_init, model, frames, crop, seed):
    from .model.evaluation.evaluate import SourceConfig

    if ckpt is not None and random_init:
        raise click.UsageError("--ckpt and --random-init exclude each other")
    return SourceConfig(
        ckpt=ckpt,
        runs=run or DEFAULT_DATA / "runs",
        random_init=random_init,
        model=model,
        frames=frames,
        crop=crop,
        seed=seed,
    )


def _eval_data(dataset: str | None, data: Path | None, source) -> Path:
    """--data, else <data root>/<--dataset>, else the data the evaluated run was trained on, else the data
    root's one processed dataset."""
    if data is not None:
        return data
    if dataset is not None:
        return DEFAULT_DATA / dataset
    from .model.evaluation.evaluate import trained_on

    return trained_on(source) or _dataset_folder(None)


def _announce(source) -> None:
    """Say which backbone is evaluated, first and on stderr, when the user did not name it."""
    from .model.evaluation.evaluate import picked_for_you

    line = picked_for_you(source)
    if line:
        click.echo(line, err=True)


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    import json

    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        for line in lines:
            click.echo(line)


@eval_group.command("retrieval")
@_data_options
@_source_options
@click.option(
    "--modality",
    type=click.Choice(EVAL_VIEWS),
    default=None,
    help="View whose features are retrieved [default: the method's protocol: res for IIC/CMC, rgb for "
    "DualVar, the trained view for a flow run].",
)
@click.option(
    "--merge", is_flag=True, help="Concatenate RGB and --modality features (each L2-normalised first)."
)
@click.option(
    "--feature",
    type=click.Choice(FEATURES),
    default=None,
    help="[default: the method's protocol: conv5 for IIC/CMC, pool for DualVar]",
)
@_TEST_CLIPS
@click.option(
    "--center/--no-center",
    default=None,
    help="Subtract each set's mean [default: the method's protocol: no for IIC/CMC, yes for DualVar].",
)
@click.option(
    "--skip-corrupt",
    is_flag=True,
    help="Leave out (and list) videos with a damaged clip instead of stopping at the first.",
)
def eval_retrieval(
    dataset,
    data,
    split,
    out,
    batch_size,
    workers,
    device,
    as_json,
    ckpt,
    run,
    random_init,
    model,
    frames,
    crop,
    seed,
    modality,
    merge,
    feature,
    clips,
    center,
    skip_corrupt,
) -> None:
    """Nearest-neighbour video retrieval: test videos query the train videos (top-1/5/10/20/50)."""
    from .model.evaluation.evaluate import RetrievalConfig, evaluate_retrieval, table_lines

    source = _source_config(ckpt, run, random_init, model, frames, crop, seed)
    _announce(source)
    cfg = RetrievalConfig(
        data=_eval_data(dataset, data, source),
        split=split,
        source=source,
        modality=modality,
        merge=merge,
        feature=feature,
        clips=clips,
        center=center,
        batch_size=batch_size,
        workers=workers,
        device=device,
        out=out,
        skip_corrupt=skip_corrupt,
    )
    result = evaluate_retrieval(cfg)
    _emit(result, as_json, table_lines(result))


@eval_group.command("linear")
@_data_options
@_source_options
@click.option(
    "--modality",
    type=click.Choice(EVAL_VIEWS),
    default=None,
    help="Input view of the backbone [default: the method's protocol: res for IIC/CMC, rgb for DualVar, "
    "the trained view for a flow run].",
)
@click.option(
    "--feature",
    type=click.Choice(FEATURES),
    default=None,
    help="Backbone features: conv5 max-pooled (1, 2, 2) and flattened, or the pooled vector "
    "[default: the method's protocol: conv5 for IIC/CMC, pool for DualVar].",
)
@_TEST_CLIPS
@click.option(
    "--knn",
    type=click.IntRange(1),
    default=None,
    help="A cosine K-nearest-neighbour vote instead of the linear classifier.",
)
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-3, help="L2 penalty of the classifier.")
@click.option(
    "--skip-corrupt",
    is_flag=True,
    help="Leave out (and list) videos with a damaged clip instead of stopping at the first.",
)
def eval_linear(
    dataset,
    data,
    split,
    out,
    batch_size,
    workers,
    device,
    as_json,
    ckpt,
    run,
    random_init,
    model,
    frames,
    crop,
    seed,
    modality,
    feature,
    clips,
    knn,
    weight_decay,
    skip_corrupt,
) -> None:
    """Frozen features -> logistic regression (or kNN) on the train list; top-1 on the test list."""
    from .model.evaluation.evaluate import LinearConfig, evaluate_linear
    from .model.evaluation.features import data_line

    source = _source_config(ckpt, run, random_init, model, frames, crop, seed)
    _announce(source)
    cfg = LinearConfig(
        data=_eval_data(dataset, data, source),
        split=split,
        source=source,
        modality=modality,
        feature=feature,
        clips=clips,
        knn=knn,
        weight_decay=weight_decay,
        batch_size=batch_size,
        workers=workers,
        device=device,
        out=out,
        skip_corrupt=skip_corrupt,
    )
    r = evaluate_linear(cfg)
    _emit(
        r,
        as_json,
        [
            f"{r['method']}: top-1 {r['top1']:.1f}% on {r['counts']['test']} test videos "
            f"({r['counts']['train']} train; "
            f"{r['counts']['failed_test']} failed) — {r['checkpoint']}",
            data_line(r["data"]),
            f"features {'read from cache' if r['cached'] else 'extracted'}; results in {r['out']}",
        ],
    )


@eval_group.command("recognition")
@_data_options
@_source_options
@click.option(
    "--modality",
    type=click.Choice(EVAL_VIEWS),
    default=None,
    help="Input view of the backbone [default: the method's protocol: res for IIC/CMC, rgb for DualVar, "
    "the trained view for a flow run].",
)
@click.option("--epochs", type=click.IntRange(1), default=150, help="Fine-tuning epochs.")
@click.option(
    "--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="Learning rate of the fine-tuning."
)
@click.option(
    "--schedule",
    type=click.Choice(["plateau", "cosine"]),
    default="plateau",
    help="plateau: x0.1 when the validation loss stalls (the paper's, for long runs); cosine: to 0 "
    "over the run (short runs: the validation loss of a small set is too noisy to plateau on).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9, max_open=False),
    default=0.1,
    help="Share of the train list held out for validation (deterministic by --seed).",
)
@_TEST_CLIPS
@click.option(
    "--resume", is_flag=True, help="Continue the fine-tuning run in --out from its last checkpoint."
)
def eval_recognition(
    dataset,
    data,
    split,
    out,
    batch_size,
    workers,
    device,
    as_json,
    ckpt,
    run,
    random_init,
    model,
    frames,
    crop,
    seed,
    modality,
    epochs,
    lr,
    schedule,
    val_fraction,
    clips,
    resume,
) -> None:
    """Fine-tune backbone + linear classifier on the train list; top-1/top-5 per test video."""
    from .model.evaluation.features import data_line
    from .model.run.finetune import FinetuneConfig, finetune

    source = _source_config(ckpt, run, random_init, model, frames, crop, seed)
    _announce(source)
    cfg = FinetuneConfig(
        data=_eval_data(dataset, data, source),
        split=split,
        source=source,
        modality=modality,
        epochs=epochs,
        lr=lr,
        schedule=schedule,
        val_fraction=val_fraction,
        clips=clips,
        batch_size=batch_size,
        workers=workers,
        device=device,
        out=out,
        seed=seed,
    )
    click.get_current_context().meta["resume"] = "the same command with --resume continues the fine-tuning"
    r = finetune(cfg, resume=resume)
    _emit(
        r,
        as_json,
        [
            f"recognition: top-1 {r['top1']:.1f}%  top-5 {r['top5']:.1f}% on {r['counts']['test']} "
            "test videos "
            f"({r['counts']['train']} train, {r['counts']['val']} val) — {r['checkpoint']}",
            data_line(r["data"]),
            f"results in {r['out']}",
        ],
    )
    for warning in r["warnings"]:
        click.echo(f"Warning: {warning}", err=True)


@main.command()
@click.option("--device", callback=_check_device, default="auto", help="auto | cpu | cuda | cuda:N")
@click.option(
    "--preset", default="tiny", help="The recipe whose training throughput is measured (`iic presets`)."
)
@click.option(
    "--seconds", type=click.FloatRange(1), default=60.0, help="Length of the throughput measurement."
)
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=None,
    help="DataLoader workers of the throughput measurement [default: the preset's].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The JSON report [default: <data root>/selfcheck.json].",
)
def selfcheck(device, preset, seconds, workers, out) -> None:
    """Check this machine: versions and device, AMP against fp32, tvl1-torch on the device, training
    throughput, and DDP when two GPUs are visible. Exit status 0 when every check passes (or is skipped)."""
    from .selfcheck import SelfcheckConfig, table
    from .selfcheck import selfcheck as run_checks

    build_config(preset)  # an unknown preset is a usage error before any work
    out = out or DEFAULT_DATA / "selfcheck.json"
    checks = run_checks(
        SelfcheckConfig(device=device, preset=preset, seconds=seconds, workers=workers, out=out)
    )
    for line in table(checks):
        click.echo(line)
    click.echo(f"report: {out}", err=True)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        click.echo(f"Error: {len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        sys.exit(1)
