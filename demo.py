"""``iic demo``: the main job on the embedded synthetic dataset, end to end on CPU.

generate the motion-class dataset -> extract frames and residuals -> optical flow -> train IIC (tiny preset),
the CMC baseline and DualVar -> retrieval for each and for a random-init backbone -> one table side by side.
Every step resumes: a second ``iic demo`` reuses what the first one finished.

``camera`` films the dataset with one of the synthetic cameras (pipeline/synth.py): the camera's motion is
then estimated too (pipeline/camera.py), IIC and CMC train on the stabilised views (presets
``tiny-stable`` and ``cmc-tiny-stable``), and the table adds retrieval with ``res-stable`` input beside the
plain residual, so the demo shows what a moving camera does to each view. Such a dataset, its runs and its
report are named after the camera (``synth-pan``, ``demo-pan-*``, ``demo-pan.json``) beside the still
camera's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .model.config import TrainConfig, build_config
from .model.distributed import cpu_threads
from .model.evaluation.evaluate import RetrievalConfig, SourceConfig, evaluate_retrieval, prefetch_features
from .model.evaluation.protocol import protocol_for
from .model.run.sweep import TrainTask, cpu_cores, side_by_side
from .pipeline.camera import CameraStageConfig
from .pipeline.camera import compute as compute_camera
from .pipeline.extract import ExtractConfig, extract
from .pipeline.flow import FlowStageConfig
from .pipeline.flow import compute as compute_flow
from .pipeline.flowcalc import FlowConfig
from .pipeline.parallel import ParallelConfig
from .pipeline.synth import SynthConfig, generate
from .reproduce import machine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    data: Path = Path("data")
    classes: int = 8  # the four time-reversal pairs (pipeline/synth.py)
    per_class: int = 45  # 360 videos, one appearance each: 240 gallery, 120 independent queries (split 1)
    frames: int = 40
    size: tuple[int, int] = (96, 128)  # (H, W) of the generated and stored videos
    flow_method: str = "dis"  # the tiny presets train on residuals; DIS shows the flow stage in seconds
    workers: int = 2
    jobs: int = 0  # training runs side by side on CPU (one thread each); 0 = one per core
    seed: int = 0
    epochs: int | None = None  # None: the presets' own
    camera: str = "still"  # the synthetic camera (pipeline/synth.py, SYNTH_CAMERAS)
    # Retrieval with the encoder's RGB input and with residual input (IIC's retrieval setting); each method
    # is scored with its own paper's protocol (model/protocol.py), the random-init backbone with both.
    retrieval_modalities: tuple[str, ...] = ("rgb", "res")

    @property
    def moving(self) -> bool:
        return self.camera != "still"

    @property
    def suffix(self) -> str:
        """What names a moving camera's dataset, runs and report: ``-<camera>`` (a still camera: none)."""
        return f"-{self.camera}" if self.moving else ""

    @property
    def name(self) -> str:
        """``synth``, or ``synth-<camera>`` for a moving camera."""
        return "synth" + self.suffix

    @property
    def raw(self) -> Path:
        return Path(self.data) / "raw" / self.name

    @property
    def processed(self) -> Path:
        """The processed dataset, named ``synth`` under the data root (where every default finds it)."""
        return Path(self.data) / self.name

    @property
    def runs(self) -> Path:
        return Path(self.data) / "runs"

    @property
    def prefix(self) -> str:
        """Of the demo's run folders and report: ``demo``, or ``demo-<camera>``."""
        return "demo" + self.suffix

    @property
    def runs_trained(self) -> tuple[tuple[str, str, str], ...]:
        """(row name, preset, method) of every run the demo trains."""
        return MOVING_RUNS if self.moving else RUNS

    @property
    def modalities(self) -> tuple[str, ...]:
        """The inputs retrieved with: with a moving camera also the stabilised residual."""
        return (*self.retrieval_modalities, *(("res-stable",) if self.moving else ()))


# (row name, preset, method). IIC with shuffle negatives (`tiny-shuffle`) is in bench/bench_learning.py, not
# here: the demo stays within ~11 minutes on 2 cores.
RUNS = (
    ("IIC (repeat)", "tiny", "iic"),
    ("CMC baseline", "cmc-tiny", "iic"),
    ("DualVar", "dualvar-tiny", "dualvar"),
)
# With a moving camera IIC and CMC see the stabilised clips (DualVar's SimCLR views take no camera views).
MOVING_RUNS = (
    ("IIC (repeat), stabilised", "tiny-stable", "iic"),
    ("CMC baseline, stabilised", "cmc-tiny-stable", "iic"),
    ("DualVar", "dualvar-tiny", "dualvar"),
)
# A camera view is reported where its paper reports the view it stands for.
STANDS_FOR = {"res-stable": "res"}


Progress = Callable[[str], None]  # one line per stage and run (``iic demo`` prints them on stderr)


def prepare_data(cfg: DemoConfig) -> None:
    parallel = ParallelConfig(workers=cfg.workers)
    generate(
        SynthConfig(
            out=cfg.raw,
            classes=cfg.classes,
            per_class=cfg.per_class,
            frames=cfg.frames,
            height=cfg.size[0],
            width=cfg.size[1],
            seed=cfg.seed,
            camera=cfg.camera,
        )
    )
    summary = extract(
        ExtractConfig(
            dataset="ucf101",
            root=cfg.raw,
            out=cfg.processed.parent,
            name=cfg.processed.name,
            size=cfg.size,
            parallel=parallel,
        )
    )
    if summary.failed:
        raise RuntimeError(f"{summary.failed} synthetic videos failed extraction: {summary.failures[0]}")
    flow = compute_flow(
        FlowStageConfig(data=cfg.processed, flow=FlowConfig(cfg.flow_method), parallel=parallel)
    )
    if flow.failed:
        raise RuntimeError(f"{flow.failed} synthetic videos failed flow: {flow.failures[0]}")
    if cfg.moving:
        camera = compute_camera(CameraStageConfig(data=cfg.processed, parallel=parallel))
        if camera.failed:
            raise RuntimeError(
                f"{camera.failed} synthetic videos failed the camera stage: {camera.failures[0]}"
            )


def _cpu() -> bool:
    return not torch.cuda.is_available()


def _inputs(cfg: DemoConfig, method: str) -> tuple[str, ...]:
    """The inputs a method's paper reports (DualVar: RGB only), of those the demo retrieves with."""
    return tuple(m for m in cfg.modalities if STANDS_FOR.get(m, m) in protocol_for(method).inputs)


def _retrieval(cfg: DemoConfig, source: SourceConfig, cache: Path) -> RetrievalConfig:
    # on CPU the features are computed beside training (one thread, no loader workers: the cores are busy)
    return RetrievalConfig(
        data=cfg.processed, source=source, workers=0 if _cpu() else cfg.workers, cache=cache
    )


def _run_source(cfg: DemoConfig, final: Path) -> tuple[SourceConfig, Path]:
    return SourceConfig(ckpt=final, runs=cfg.runs), final.parent / "eval" / "features"


def _baseline(cfg: DemoConfig, methods: tuple[str, ...]) -> tuple[SourceConfig, Path, tuple[str, ...]]:
    """The random-init backbone (IIC's backbone and clips), its feature cache and the features its rows need
    (each method's protocol)."""
    iic = build_config(cfg.runs_trained[0][1])
    source = SourceConfig(
        ckpt=None,
        random_init=True,
        runs=cfg.runs,
        seed=cfg.seed,
        model=iic.model,
        frames=iic.frames,
        crop=iic.crop,
    )
    return (
        source,
        cfg.runs / f"{cfg.prefix}-random-init" / "features",
        tuple(dict.fromkeys(protocol_for(m).feature for m in methods)),
    )


def prefetch_run(cfg: DemoConfig, method: str, progress: bool, run: TrainConfig, final: Path) -> None:
    """A trained run's features for the table, computed in the worker that trained it (`sweep.TrainTask`)."""
    source, cache = _run_source(cfg, final)
    with cpu_threads(1 if _cpu() else 0):
        prefetch_features(
            _retrieval(cfg, source, cache), _inputs(cfg, method), (protocol_for(method).feature,), progress
        )


def prefetch_baseline(cfg: DemoConfig, methods: tuple[str, ...], progress: bool) -> None:
    """The random-init backbone's features: no training needed, so they fill a worker beside the runs."""
    source, cache, features = _baseline(cfg, methods)
    with cpu_threads(1 if _cpu() else 0):
        prefetch_features(_retrieval(cfg, source, cache), cfg.modalities, features, progress)


def train_runs(cfg: DemoConfig, progress: Progress = log.info) -> dict[str, tuple[str, Path]]:
    """Train every demo configuration (skipping finished runs, resuming interrupted ones) and compute the
    features the table needs. On CPU each run trains with one thread, loading its own clips (no loader
    workers: the cores are busy training), and ``cfg.jobs`` of them side by side (0: one per core;
    `model/sweep.py`), so the table is the same on any CPU machine; each worker then computes its run's
    features, and the random-init backbone's fill a worker too, so no core waits for the longest run. On CUDA
    one after another."""
    runs = list(cfg.runs_trained)
    cfgs = [
        build_config(
            preset,
            data=cfg.processed,
            out=cfg.runs / f"{cfg.prefix}-{preset}",
            seed=cfg.seed,
            epochs=cfg.epochs,
            **({"threads": 1, "workers": 0} if _cpu() else {}),
        )
        for _, preset, _ in runs
    ]
    jobs = (cfg.jobs or cpu_cores()) if _cpu() else 1
    pending = [
        name for (name, _, _), c in zip(runs, cfgs, strict=True) if not (Path(c.out) / "final.pt").exists()
    ]
    if pending:
        progress(
            f"training {', '.join(pending)}"
            + (f", {min(jobs, len(pending))} at a time, one CPU thread each" if _cpu() and jobs > 1 else "")
            + " (several minutes on a CPU)"
        )
    methods = tuple(sorted({method for _, _, method in runs}))
    alone = jobs <= 1  # progress bars only when nothing runs beside
    tasks = [
        TrainTask(c, then=functools.partial(prefetch_run, cfg, method, alone))
        for (_, _, method), c in zip(runs, cfgs, strict=True)
    ]
    finals: list[Path] = [Path()] * len(runs)
    for i, result, seconds in side_by_side(
        [*tasks, functools.partial(prefetch_baseline, cfg, methods, alone)], jobs
    ):
        if i < len(runs):
            finals[i] = result
            progress(f"{runs[i][0]}: trained and encoded in {seconds:.0f} s -> {result}")
        else:
            progress(f"random-init features in {seconds:.0f} s")
    return {name: (method, final) for (name, _, method), final in zip(runs, finals, strict=True)}


Row = tuple[
    str, str, dict[str, dict]
]  # (name, method whose protocol scored it, {modality: retrieval result})


def retrieval_rows(cfg: DemoConfig, finals: dict[str, tuple[str, Path]]) -> list[Row]:
    """Each backbone's clips were decoded and encoded once (`train_runs`): every input view, and for the
    random init every protocol's feature, filled its cache in that pass; each retrieval reads its own."""

    def run(source: SourceConfig, cache: Path, method: str, out: Path) -> dict[str, dict]:
        base = _retrieval(cfg, source, cache)
        return {
            m: evaluate_retrieval(dataclasses.replace(base, modality=m, out=out / m).with_protocol(method))
            for m in _inputs(cfg, method)
        }

    rows = [
        (name, method, run(*_run_source(cfg, final), method, final.parent / "eval"))
        for name, (method, final) in finals.items()
    ]
    methods = tuple(sorted({method for method, _ in finals.values()}))
    source, cache, _ = _baseline(cfg, methods)
    for method in methods:
        rows.append(
            (
                f"random init ({method} protocol)",
                method,
                run(source, cache, method, cfg.runs / f"{cfg.prefix}-random-init" / method / "eval"),
            )
        )
    return rows


def table(rows: list[Row], ks: tuple[int, ...] = (1, 5, 10)) -> list[str]:
    """One line per row; ``-`` where a method's paper does not report that input (DualVar: RGB only)."""
    modalities = list(dict.fromkeys(m for _, _, r in rows for m in r))
    width = max(len(name) for name, _, _ in rows)
    head = "  ".join(f"{m + ' top' + str(k):>10}" for m in modalities for k in ks)
    lines = [f"{'':{width}}  {head}  protocol"]
    for name, _, r in rows:
        cells = [f"{r[m]['topk'][k]:10.1f}" if m in r else f"{'-':>10}" for m in modalities for k in ks]
        first = next(iter(r.values()))["config"]
        lines.append(
            f"{name:{width}}  "
            + "  ".join(cells)
            + f"  {first['feature']}{', centred' if first['center'] else ''}"
        )
    r0 = next(iter(rows[0][2].values()))
    classes = len(set(q["label"] for q in r0["queries"]))
    lines.append(
        f"retrieval top-k (%) of {r0['counts']['queries']} test videos against {r0['counts']['gallery']} "
        f"train videos ({classes} classes: chance top-1 {100 / classes:.1f}%), "
        f"mean of {r0['config']['clips']} clips, "
        f"features of the {' / '.join(modalities)} input, each method with its own protocol "
        "(- = an input its paper does not report)"
    )
    return lines


def run_demo(cfg: DemoConfig, progress: Progress = log.info) -> list[str]:
    """Run everything, saying each stage and each run as it ends (``progress``); returns the lines of the
    final report (also saved as ``<runs>/demo.json``, ``demo-<camera>.json`` for a moving camera)."""
    t0 = time.perf_counter()
    stages = "generate, extract, flow" + (", camera" if cfg.moving else "")
    progress(f"preparing the synthetic dataset in {cfg.processed} ({stages})")
    prepare_data(cfg)
    progress(f"dataset ready in {time.perf_counter() - t0:.0f} s")
    finals = train_runs(cfg, progress)
    progress("retrieval")
    rows = retrieval_rows(cfg, finals)
    lines = table(rows)
    lines += [f"curves: {final.parent / 'curves.png'}" for _, final in finals.values()]
    lines += [
        f"retrieval picture: {Path(r['out']) / 'retrieval.png'}"
        for _, _, by_mod in rows
        for r in by_mod.values()
    ]
    lines.append(f"demo time: {time.perf_counter() - t0:.0f} s")
    report = {
        "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        "machine": machine(),  # what the figures depend on (reproduce.py)
        "rows": [
            {
                "name": n,
                "protocol": method,
                **{m: {"topk": r["topk"], "checkpoint": r["checkpoint"]} for m, r in by_mod.items()},
            }
            for n, method, by_mod in rows
        ],
        "lines": lines,
    }
    cfg.runs.mkdir(parents=True, exist_ok=True)
    (cfg.runs / f"{cfg.prefix}.json").write_text(json.dumps(report, indent=2))
    return lines
