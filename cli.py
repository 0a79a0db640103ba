"""Command line: ``iic-prep`` (offline stage) and ``iic`` (training core).

Each command parses and validates its flags, builds one frozen config and calls one library function.
Expected failures (bad input, missing data, a busy folder) end in a one-line message and a non-zero
exit status, never a traceback. Exit status: 0 success, 1 error, 2 bad usage, 3 some videos failed.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from .model.names import FEATURES, HEADS, METHODS, NEGATIVES, OPTIMIZERS, POSITIVES, RGB_AUGS, SCHEDULES, VIEW2_TIMES  # torch-free
from .model.views import EVAL_VIEWS, VIEWS  # torch-free
from .pipeline.datasets import DATASETS  # no OpenCV, h5py or joblib
from .pipeline.names import BACKENDS, FLOW_METHODS  # no OpenCV, h5py or joblib

DEFAULT_DATA = Path(os.environ.get("IIC_DATA", "data"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


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
        raise click.BadParameter(f"{value!r} is neither HxW (e.g. 128x171) nor a short side of at least 16 (e.g. 128)") from None


def _parallel_options(f):
    f = click.option("--scheduler", default=None, help="Dask scheduler address (with --backend dask).")(f)
    f = click.option("--backend", type=click.Choice(BACKENDS), default="loky",
                     help="joblib backend: local processes or a Dask cluster.")(f)
    f = click.option("--workers", type=click.IntRange(1), default=os.cpu_count() or 1,
                     help="Parallel shard writers (one process each).")(f)
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


@click.group(context_settings=CONTEXT)
@_version_option("iic-prep")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def prep(verbose: bool) -> None:
    """Offline stage: synthetic data, frames, optical flow, checks.

    Paths default under the data root: $IIC_DATA, else ./data. --data is a processed dataset folder
    (<data root>/<dataset>), --data-root the data root, --out what a command writes; --workers are processes.
    """
    _setup_logging(verbose)


@prep.command()
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_DATA / "raw" / "synth",
              help="Folder to write the UCF101-layout dataset into.")
@click.option("--classes", type=click.IntRange(1), default=8,
              help="Motion classes (the first N; 8 = four pairs that are each other's time reversal).")
@click.option("--per-class", type=click.IntRange(1), default=45, help="Videos per class.")
@click.option("--groups", type=click.IntRange(3), default=None,
              help="Groups per class (videos of a group share their appearance) [default: one video per group].")
@click.option("--frames", type=click.IntRange(1), default=40, help="Frames per video.")
@click.option("--size", callback=_parse_size, default="96x128", help="Frame size HxW (even).")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed of the generator (same seed, same videos).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset made with other settings.")
def synth(out, classes, per_class, groups, frames, size, seed, overwrite) -> None:
    """Generate the synthetic motion-class dataset (UCF101 layout, real AVI files)."""
    from .pipeline.synth import SynthConfig, generate

    try:
        cfg = SynthConfig(out=out, classes=classes, per_class=per_class, groups=groups, frames=frames,
                          height=size[0], width=size[1],
                          seed=seed, overwrite=overwrite)
    except ValueError as err:  # flags SynthConfig refuses (odd size, too many classes): usage
        _fail(str(err).splitlines()[0], 2)
    try:
        report = generate(cfg)
    except (ValueError, FileExistsError, OSError) as err:
        _fail(str(err).splitlines()[0])
    click.echo(f"{report.videos} videos of {len(report.class_names)} classes in {report.out} "
               f"(extract with: iic-prep extract --dataset ucf101 --root {report.out})")


@prep.command()
@click.option("--dataset", type=click.Choice(DATASETS),
              default="ucf101", help="Layout of --root (folder: one sub-folder per class; kinetics*: the official CSVs).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Folder the official archives were unpacked into [default: <data root>/raw/<dataset>].")
@click.option("--data-root", "--out", "out", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              help="The data root (as everywhere: $IIC_DATA, else ./data); the dataset goes to <data root>/<dataset>.")
@click.option("--split", type=click.IntRange(1, 3), default=1, help="Official split whose train/test lists are read.")
@click.option("--size", callback=_parse_frame_size, default="128x171",
              help="Frame size HxW, or a short side S: the shorter side becomes S, the other keeps the aspect (even).")
@click.option("--quality", type=click.IntRange(50, 100), default=90, help="JPEG quality.")
@click.option("--subsampling", type=click.Choice(["420", "444"]), default="420",
              help="JPEG chroma subsampling.")
@click.option("--store-residuals", is_flag=True,
              help="Also store a residual stream (default: residuals are derived from the stored frames when read).")
@click.option("--shard-size", type=click.IntRange(1), default=64, help="Videos per shard.")
@click.option("--subset", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Kinetics: a file of class names or of videos (YouTube ids) restricting the set, e.g. Mini-Kinetics-200.")
@click.option("--unlabelled", is_flag=True,
              help="Kinetics: also extract test.csv, as unlabelled videos (label -1, in neither the train nor the test list).")
@_parallel_options
@click.option("--overwrite", is_flag=True, help="Redo every shard instead of resuming.")
@click.option("--repair", is_flag=True,
              help="Also verify every kept shard's checksums (reads them all) and rewrite the damaged ones.")
def extract(dataset, root, out, split, size, quality, subsampling, store_residuals, shard_size, subset, unlabelled,
            workers, backend, scheduler, overwrite, repair) -> None:
    """Decode every video of the split's lists into HDF5 shards of JPEG RGB frames.

    Residual frames are derived from the stored RGB frames when read; --store-residuals also stores them.
    """
    from .pipeline.datasets import DatasetLayoutError
    from .pipeline.extract import ExtractConfig, extract as run
    from .pipeline.lock import LockedError

    cfg = ExtractConfig(
        dataset=dataset, root=root or out / "raw" / dataset, out=out, split=split, size=size, quality=quality,
        subsampling=subsampling, store_residuals=store_residuals, shard_size=shard_size, subset=subset,
        unlabelled=unlabelled, parallel=_parallel_config(workers, backend, scheduler), overwrite=overwrite,
        repair=repair,
    )
    try:
        summary = run(cfg)
    except (DatasetLayoutError, LockedError, FileExistsError, OSError) as err:
        _fail(str(err))
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@prep.command()
@click.option("--dataset", default="ucf101", help="Used for the default --data.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Processed dataset folder [default: <data root>/<dataset>].")
@click.option("--method", type=click.Choice(FLOW_METHODS), default="tvl1",
              help="tvl1 = OpenCV DualTVL1 defaults (reference); tvl1-fast = epsilon 0.05 (~8x faster); dis, farneback; "
                   "tvl1-torch = the same TV-L1 in PyTorch, batched, on --device (CPU: --workers processes of one thread; "
                   "CUDA: one process).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="tvl1-torch only: where to compute (auto = CUDA if available)  [default: auto]")
@click.option("--batch", type=click.IntRange(1), default=None,
              help="tvl1-torch only: most frame pairs per call (capped from the frame size and free memory) "
                   "[default: 2 on the CPU, as many as fit on a GPU]")
@click.option("--bound", type=click.FloatRange(0, min_open=True), default=20.0,
              help="Clip displacements to +-BOUND px before uint8 quantisation.")
@_parallel_options
@click.option("--overwrite", is_flag=True, help="Recompute all flow instead of resuming.")
@click.option("--repair", is_flag=True,
              help="Also verify every kept flow shard's checksums (reads them all) and recompute the damaged ones.")
def flow(dataset, data, method, device, batch, bound, workers, backend, scheduler, overwrite, repair) -> None:
    """Dense optical flow between consecutive stored frames into flow shards (N frames -> N-1 pairs)."""
    from .pipeline.flow import FlowStageConfig, compute
    from .pipeline.flowcalc import TORCH_METHODS, FlowConfig, FlowDeviceError
    from .pipeline.lock import LockedError
    from .pipeline.shards import FormatError

    if method not in TORCH_METHODS:
        for name, value in (("--device", device), ("--batch", batch)):
            if value is not None:
                raise click.BadParameter(f"{name} is only used with --method tvl1-torch", param_hint=name)
    data = data or DEFAULT_DATA / dataset
    cfg = FlowStageConfig(data=data, flow=FlowConfig(method, bound, device=device or "auto", batch=batch),
                          parallel=_parallel_config(workers, backend, scheduler), overwrite=overwrite, repair=repair)
    try:
        summary = compute(cfg)
    except (FormatError, LockedError, FlowDeviceError, OSError) as err:
        _fail(str(err))
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@prep.command()
@click.option("--video", "video_id", required=True, help="Video id (manifest `id`, e.g. MoveLeft/v_MoveLeft_g01_c01).")
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA / "ucf101",
              help="Processed dataset folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Picture to write; its suffix names the format: .png, .jpg/.jpeg, .pdf or .svg.")
@click.option("--columns", type=click.IntRange(1, 32), default=8, help="Frames shown.")
def show(video_id, data, out, columns) -> None:
    """Picture of a stored video: RGB frames, residuals and flow (colour wheel), frame indices labelled."""
    from .pipeline.shards import FormatError
    from .pipeline.show import picture_format, show_video

    try:
        picture_format(out)
    except ValueError as err:
        _fail(str(err), 2)
    try:
        path = show_video(data, video_id, out, columns)
    except (FormatError, KeyError) as err:
        _fail(str(err).strip("'\""))
    click.echo(f"wrote {path}")


@prep.command()
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA / "ucf101",
              help="Processed dataset folder.")
def info(data: Path) -> None:
    """Summary of a processed dataset."""
    from .pipeline.info import dataset_info
    from .pipeline.shards import FormatError

    try:
        lines = dataset_info(data)
    except FormatError as err:
        _fail(str(err))
    for line in lines:
        click.echo(line)


@prep.command()
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA / "ucf101",
              help="Processed dataset folder.")
def check(data: Path) -> None:
    """Open every shard, verify counts against the manifest and every stored checksum, decode samples."""
    from .pipeline.info import check_report

    report = check_report(data)
    for line in report.problems:  # the problems on stderr with the verdict, what was not verifiable on stdout
        click.echo(line, err=True)
    for line in report.notes():
        click.echo(line)
    if report.problems:
        _fail(f"{len(report.problems)} problem(s) in {data}")
    click.echo(f"{data}: ok")


@click.group(context_settings=CONTEXT)
@_version_option("iic")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Training and evaluation.

    Paths default under the data root: $IIC_DATA, else ./data. --data is a processed dataset folder
    (<data root>/<dataset>), --data-root the data root, --out what a command writes (a run folder, an
    evaluation folder); --workers are DataLoader worker processes.
    """
    _setup_logging(verbose)


@main.command("train")
@click.option("--dataset", default="ucf101", help="Dataset name: the data folder is <data root>/<dataset> unless --data names it.")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Processed dataset folder [default: <data root>/<dataset>].")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split whose train list is used.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder [default: data/runs/<preset or method>].")
@click.option("--preset", default=None, help="A named configuration (see `iic presets`); flags override it.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Objective: IIC (and CMC with --neg none) or DualVar.")
@click.option("--model", default=None, help="Backbone preset: r3d-10, r21d-10, c3d, r3d-tiny, ...")
@click.option("--view2", type=click.Choice(VIEWS), default=None,
              help="The second view contrasted with RGB.")
@click.option("--neg", type=click.Choice(NEGATIVES), default=None, help="Intra-negative (none = CMC).")
@click.option("--view2-time", type=click.Choice(VIEW2_TIMES), default=None,
              help="IIC's view 2 from the frames of view 1 (same, the paper's) or another random time of the video.")
@click.option("--rgb-aug", type=click.Choice(RGB_AUGS), default=None,
              help="IIC's RGB views: random crop only (paper) or also SimCLR's colour jitter, grayscale and blur.")
@click.option("--head", type=click.Choice(HEADS), default=None,
              help="none (paper), mlp (512-512-128 + L2, authors' v2 code), mlp-bn (+ BatchNorm in its hidden "
                   "layer), mlp-bn-out (+ also a centring one on its output) or bn (centring BatchNorm).")
@click.option("--positive", type=click.Choice(POSITIVES), default=None,
              help="IIC positive: the other view's bank row (paper) or its feature of the same step.")
@click.option("--live-negative/--no-live-negative", default=None, help="Also use the current intra-negative as a logit.")
@click.option("--batch-negatives/--no-batch-negatives", default=None,
              help="IIC: also contrast with the batch's other clips and intra-negatives (live, with gradient).")
@click.option("--frames", type=click.IntRange(2), default=None, help="Frames per clip (T).")
@click.option("--stride", type=click.IntRange(1), default=None, help="Frame stride within a clip (DualVar: 4).")
@click.option("--dualvar", "dualvar_opts", multiple=True, metavar="KEY=VALUE",
              help="A DualVar option, repeatable: tau_clip, tau_tc, theta, w_clip, w_tc, clip_loss=moco, moco_k, "
                   "jitter_p, blur_p, grayscale_p, ... (model/dualvar.py).")
@click.option("--crop", type=click.IntRange(8), default=None, help="Square random crop of the stored frames, px.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(2), default=None, help="Videos per step (per process under DDP).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="Peak learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="sgd (paper) or adam.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Learning-rate decay: the paper's steps or cosine to 0.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=None, help="Linear learning-rate warm-up.")
@click.option("--K", "K", type=click.IntRange(0), default=None,
              help="Negatives per sample drawn from the banks (0: none, with --batch-negatives).")
@click.option("--tau", type=click.FloatRange(0, min_open=True), default=None, help="IIC temperature.")
@click.option("--m", "m", type=click.FloatRange(0, 1, max_open=True), default=None, help="IIC bank momentum.")
@click.option("--monitor-every", type=click.IntRange(0), default=None,
              help="Epochs between test-split retrieval top-1 checks (0 = off).")
@click.option("--workers", type=click.IntRange(0), default=None, help="DataLoader worker processes.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
@click.option("--threads", type=click.IntRange(0), default=None,
              help="CPU threads for the run (0 = torch's default). CPU results are bit-identical for the same count.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (ignored on CPU).")
@click.option("--seed", type=int, default=None, help="Seed of initialisation, sampling and augmentation.")
@click.option("--skip-corrupt", is_flag=True, default=None,
              help="Leave out clips whose stored bytes are damaged (each video said once, counted at the end) "
                   "instead of stopping at the first; one process only.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def train_cmd(dataset, data, split, out, preset, method, model, view2, neg, view2_time, rgb_aug, head, positive, live_negative, batch_negatives,
              frames, stride, dualvar_opts, crop, epochs, batch_size, lr, optimizer, schedule, warmup_epochs, K, tau, m, monitor_every,
              workers, device, threads, amp, seed, skip_corrupt, resume) -> None:
    """Self-supervised pretraining (IIC; DualVar with --method dualvar).

    An option left out takes the value of --preset, else the default in model/config.py (TrainConfig).
    """
    from .model.checkpoint import CheckpointError
    from .model.clips import DataError
    from .model.config import ConfigError, build_config
    from .model.distributed import DeviceError
    from .model.config import parse_dualvar_options
    from .model.train import TrainingError, train
    from .pipeline.shards import FormatError

    data = data or DEFAULT_DATA / dataset
    out = out or DEFAULT_DATA / "runs" / (preset or method or "iic")
    try:
        cfg = build_config(preset, data=data, split=split, out=out, method=method, model=model, view2=view2, neg=neg,
                           view2_time=view2_time, rgb_aug=rgb_aug,
                           head=head, positive=positive, live_negative=live_negative,
                           batch_negatives=batch_negatives, frames=frames, stride=stride,
                           dualvar=parse_dualvar_options(dualvar_opts) if dualvar_opts else None, crop=crop, epochs=epochs,
                           batch_size=batch_size, lr=lr, optimizer=optimizer, schedule=schedule,
                           warmup_epochs=warmup_epochs, K=K, tau=tau, m=m, monitor_every=monitor_every,
                           workers=workers, device=device, threads=threads, amp=amp, seed=seed,
                           skip_corrupt=skip_corrupt or None)
        final = train(cfg, resume=resume)
    except ConfigError as err:  # bad flags or preset: usage
        _fail(str(err).splitlines()[0], 2)
    except (DataError, FormatError, CheckpointError, TrainingError, DeviceError) as err:
        _fail(str(err).splitlines()[0])
    click.echo(f"final checkpoint: {final}")


@main.command()
def presets() -> None:
    """List the named training configurations (`iic train --preset NAME`)."""
    from .model.config import PRESETS

    for name, values in PRESETS.items():
        click.echo(f"{name:18} " + " ".join(f"{k}={v}" for k, v in values.items()))


@main.command()
@click.option("--data-root", "--data", "data", type=click.Path(path_type=Path), default=DEFAULT_DATA,
              help="The data root (as everywhere: $IIC_DATA, else ./data): synthetic videos, dataset and runs go under it.")
@click.option("--workers", type=click.IntRange(1), default=2, help="Preprocessing processes.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the presets' epochs.")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed of the data and of every run.")
@click.option("--per-class", type=click.IntRange(3, 99), default=45,
              help="Synthetic videos per class (45: the benchmark; fewer for a quick look).")
@click.option("--frames", type=click.IntRange(16), default=40, help="Frames per synthetic video.")
@click.option("--jobs", type=click.IntRange(0), default=0,
              help="Training runs side by side on CPU, one thread each (0 = one per core).")
def demo(data, workers, epochs, seed, per_class, frames, jobs) -> None:
    """The main job on the synthetic dataset: data, flow, IIC/CMC/DualVar training, retrieval table."""
    from .demo import DemoConfig, run_demo

    try:
        lines = run_demo(DemoConfig(data=data, workers=workers, epochs=epochs, seed=seed, per_class=per_class,
                                    frames=frames, jobs=jobs))
    except (RuntimeError, ValueError, OSError) as err:
        _fail(str(err).splitlines()[0])
    for line in lines:
        click.echo(line)


# --------------------------------------------------------------------------------------------------------
# iic eval


@main.group("eval")
def eval_group() -> None:
    """Evaluate a trained backbone: retrieval, fine-tuned recognition, linear / kNN probe."""


def _source_options(f):
    f = click.option("--seed", type=int, default=0, help="Seed of --random-init (and of the probe).")(f)
    f = click.option("--crop", type=click.IntRange(8), default=None, help="Centre crop [default: the checkpoint's].")(f)
    f = click.option("--frames", type=click.IntRange(2), default=None, help="Frames per clip [default: the checkpoint's].")(f)
    f = click.option("--model", default=None, help="Backbone preset [default: the checkpoint's; with --random-init the latest run's].")(f)
    f = click.option("--random-init", is_flag=True, help="An untrained backbone of the same config: the baseline.")(f)
    f = click.option("--run", type=click.Path(path_type=Path), default=None,
                     help="Where to look for the newest final.pt when --ckpt is not given [default: <data root>/runs].")(f)
    f = click.option("--ckpt", type=click.Path(path_type=Path), default=None, help="Checkpoint [default: the newest final.pt under --run, named on the terminal].")(f)
    return f


def _data_options(f):
    f = click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N")(f)
    f = click.option("--workers", type=click.IntRange(0), default=2, help="DataLoader worker processes.")(f)
    f = click.option("--batch-size", type=click.IntRange(1), default=16, help="Clips per batch.")(f)
    f = click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder [default: <run>/eval].")(f)
    f = click.option("--split", type=click.IntRange(1, 3), default=1, help="Official split: train list = gallery / "
                     "training set, test list = queries / test set.")(f)
    f = click.option("--data", type=click.Path(path_type=Path), default=None, help="Processed dataset folder [default: <data root>/<dataset>].")(f)
    f = click.option("--dataset", default="ucf101", help="Dataset name (data folder <data root>/<dataset>).")(f)
    return f


def _source_config(ckpt, run, random_init, model, frames, crop, seed):
    from .model.evaluate import SourceConfig

    if ckpt is not None and random_init:
        raise click.UsageError("--ckpt and --random-init exclude each other")
    runs = run or DEFAULT_DATA / "runs"
    if ckpt is None and not random_init:
        ckpt = _newest_checkpoint(runs)
    return SourceConfig(ckpt=ckpt, runs=runs, random_init=random_init, model=model, frames=frames, crop=crop, seed=seed)


def _newest_checkpoint(runs: Path) -> Path:
    """The newest final.pt under ``runs``, said on the terminal before any work: it is a guess."""
    from .model.checkpoint import CheckpointError
    from .model.features import find_checkpoint

    try:
        ckpt = find_checkpoint(runs)
    except CheckpointError as err:
        _fail(str(err))
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(ckpt.stat().st_mtime))
    click.secho(f"No --ckpt given: evaluating the newest checkpoint under {runs}: {ckpt} (written {written})",
                bold=True)
    return ckpt


def _eval_errors():
    from .model.checkpoint import CheckpointError
    from .model.clips import DataError
    from .model.config import ConfigError
    from .pipeline.shards import FormatError

    return (CheckpointError, DataError, ConfigError, FormatError, ValueError, KeyError, OSError)


@eval_group.command("retrieval")
@_data_options
@_source_options
@click.option("--modality", type=click.Choice(EVAL_VIEWS), default=None,
              help="View whose features are retrieved [default: the method's protocol: res for IIC/CMC, rgb for DualVar].")
@click.option("--merge", is_flag=True, help="Concatenate RGB and --modality features (each L2-normalised first).")
@click.option("--feature", type=click.Choice(FEATURES), default=None,
              help="[default: the method's protocol: conv5 for IIC/CMC, pool for DualVar]")
@click.option("--clips", type=click.IntRange(1), default=10, help="Test clips per video.")
@click.option("--center/--no-center", default=None,
              help="Subtract each set's mean [default: the method's protocol: no for IIC/CMC, yes for DualVar].")
@click.option("--skip-corrupt", is_flag=True,
              help="Leave out (and list) videos with a damaged clip instead of stopping at the first.")
def eval_retrieval(dataset, data, split, out, batch_size, workers, device, ckpt, run, random_init, model, frames, crop,
                   seed, modality, merge, feature, clips, center, skip_corrupt) -> None:
    """Nearest-neighbour video retrieval: test videos query the train videos (top-1/5/10/20/50)."""
    from .model.evaluate import RetrievalConfig, evaluate_retrieval, table_lines

    cfg = RetrievalConfig(data=data or DEFAULT_DATA / dataset, split=split,
                          source=_source_config(ckpt, run, random_init, model, frames, crop, seed),
                          modality=modality, merge=merge, feature=feature, clips=clips, center=center,
                          batch_size=batch_size, workers=workers, device=device, out=out, skip_corrupt=skip_corrupt)
    try:
        result = evaluate_retrieval(cfg)
    except _eval_errors() as err:
        _fail(str(err).strip("'\"").splitlines()[0])
    for line in table_lines(result):
        click.echo(line)


@eval_group.command("linear")
@_data_options
@_source_options
@click.option("--modality", type=click.Choice(EVAL_VIEWS), default=None,
              help="Input view of the backbone [default: the method's protocol: res for IIC/CMC, rgb for DualVar].")
@click.option("--feature", type=click.Choice(FEATURES), default=None,
              help="Backbone features: conv5 max-pooled (1, 2, 2) and flattened, or the pooled vector "
                   "[default: the method's protocol: conv5 for IIC/CMC, pool for DualVar].")
@click.option("--clips", type=click.IntRange(1), default=10, help="Test clips per video.")
@click.option("--knn", type=click.IntRange(1), default=None, help="A cosine K-nearest-neighbour vote instead of the linear classifier.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-3, help="L2 penalty of the classifier.")
@click.option("--skip-corrupt", is_flag=True,
              help="Leave out (and list) videos with a damaged clip instead of stopping at the first.")
def eval_linear(dataset, data, split, out, batch_size, workers, device, ckpt, run, random_init, model, frames, crop,
                seed, modality, feature, clips, knn, weight_decay, skip_corrupt) -> None:
    """Frozen features -> logistic regression (or kNN) on the train list; top-1 on the test list."""
    from .model.evaluate import LinearConfig, evaluate_linear

    cfg = LinearConfig(data=data or DEFAULT_DATA / dataset, split=split,
                       source=_source_config(ckpt, run, random_init, model, frames, crop, seed), modality=modality,
                       feature=feature, clips=clips, knn=knn, weight_decay=weight_decay, batch_size=batch_size,
                       workers=workers, device=device, out=out, skip_corrupt=skip_corrupt)
    try:
        result = evaluate_linear(cfg)
    except _eval_errors() as err:
        _fail(str(err).strip("'\"").splitlines()[0])
    from .model.features import data_line

    if result["chosen"]:
        click.echo(f"backbone picked for you: {result['checkpoint']} ({result['chosen']})")
    click.echo(f"{result['method']}: top-1 {result['top1']:.1f}% on {result['counts']['test']} test videos "
               f"({result['counts']['train']} train; {result['counts']['failed_test']} failed) — {result['checkpoint']}")
    click.echo(data_line(result["data"]))
    click.echo(f"features {'read from cache' if result['cached'] else 'extracted'}; results in {result['out']}")


@eval_group.command("recognition")
@_data_options
@_source_options
@click.option("--modality", type=click.Choice(EVAL_VIEWS), default=None,
              help="Input view of the backbone [default: the method's protocol: res for IIC/CMC, rgb for DualVar].")
@click.option("--epochs", type=click.IntRange(1), default=150, help="Fine-tuning epochs.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, help="Learning rate of the fine-tuning.")
@click.option("--val-fraction", type=click.FloatRange(0, 0.9, max_open=False), default=0.1,
              help="Share of the train list held out for validation (deterministic by --seed).")
@click.option("--clips", type=click.IntRange(1), default=10, help="Test clips per video.")
@click.option("--resume", is_flag=True, help="Continue the fine-tuning run in --out from its last checkpoint.")
def eval_recognition(dataset, data, split, out, batch_size, workers, device, ckpt, run, random_init, model, frames,
                     crop, seed, modality, epochs, lr, val_fraction, clips, resume) -> None:
    """Fine-tune backbone + linear classifier on the train list; top-1/top-5 per test video."""
    from .model.finetune import FinetuneConfig, FinetuneError, finetune

    cfg = FinetuneConfig(data=data or DEFAULT_DATA / dataset, split=split,
                         source=_source_config(ckpt, run, random_init, model, frames, crop, seed), modality=modality,
                         epochs=epochs, lr=lr, val_fraction=val_fraction, clips=clips, batch_size=batch_size,
                         workers=workers, device=device, out=out, seed=seed)
    try:
        result = finetune(cfg, resume=resume)
    except (*_eval_errors(), FinetuneError) as err:
        _fail(str(err).strip("'\"").splitlines()[0])
    from .model.features import data_line

    if result["chosen"]:
        click.echo(f"backbone picked for you: {result['checkpoint']} ({result['chosen']})")
    click.echo(f"recognition: top-1 {result['top1']:.1f}%  top-5 {result['top5']:.1f}% on {result['counts']['test']} "
               f"test videos ({result['counts']['train']} train, {result['counts']['val']} val) — {result['checkpoint']}")
    click.echo(data_line(result["data"]))
    click.echo(f"results in {result['out']}")
