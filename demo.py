"""``iic demo``: the main job on the embedded synthetic dataset, end to end on CPU.

generate the motion-class dataset -> extract frames and residuals -> optical flow -> train IIC (tiny preset),
the CMC baseline and DualVar -> retrieval for each and for a random-init backbone -> one table side by side.
Every step resumes: a second ``iic demo`` reuses what the first one finished.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .pipeline.extract import ExtractConfig, extract
from .pipeline.flow import FlowStageConfig, compute as compute_flow
from .pipeline.flowcalc import FlowConfig
from .pipeline.parallel import ParallelConfig
from .pipeline.synth import SynthConfig, generate
from .model.config import build_config
from .model.evaluate import RetrievalConfig, SourceConfig, evaluate_retrieval, prefetch_features
from .model.protocol import protocol_for
from .model.sweep import cpu_cores, train_all
from .model.train import METHOD_BUILDERS

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
    # Retrieval with the encoder's RGB input and with residual input (IIC's retrieval setting); each method
    # is scored with its own paper's protocol (model/protocol.py), the random-init backbone with both.
    retrieval_modalities: tuple[str, ...] = ("rgb", "res")

    @property
    def raw(self) -> Path:
        return Path(self.data) / "raw" / "synth"

    @property
    def processed(self) -> Path:
        return Path(self.data) / "synth" / "ucf101"

    @property
    def runs(self) -> Path:
        return Path(self.data) / "runs"


# (row name, preset, method); DualVar joins when its method is registered.
# IIC with shuffle negatives (`tiny-shuffle`) is in bench/bench_learning.py, not here: the demo stays within
# ~13 minutes on 2 cores.
RUNS = (("IIC (repeat)", "tiny", "iic"), ("CMC baseline", "cmc-tiny", "iic"), ("DualVar", "dualvar-tiny", "dualvar"))


def _step(name: str) -> float:
    log.info("demo: %s", name)
    return time.perf_counter()


def prepare_data(cfg: DemoConfig) -> None:
    parallel = ParallelConfig(workers=cfg.workers)
    generate(SynthConfig(out=cfg.raw, classes=cfg.classes, per_class=cfg.per_class, frames=cfg.frames,
                         height=cfg.size[0], width=cfg.size[1], seed=cfg.seed))
    summary = extract(ExtractConfig(dataset="ucf101", root=cfg.raw, out=cfg.processed.parent, size=cfg.size,
                                    parallel=parallel))
    if summary.failed:
        raise RuntimeError(f"{summary.failed} synthetic videos failed extraction: {summary.failures[0]}")
    flow = compute_flow(FlowStageConfig(data=cfg.processed, flow=FlowConfig(cfg.flow_method), parallel=parallel))
    if flow.failed:
        raise RuntimeError(f"{flow.failed} synthetic videos failed flow: {flow.failures[0]}")


def train_runs(cfg: DemoConfig) -> dict[str, tuple[str, Path]]:
    """Train every demo configuration (skipping finished runs, resuming interrupted ones). On CPU each run
    trains with one thread, loading its own clips (no loader workers: the cores are busy training), and
    ``cfg.jobs`` of them side by side (0: one per core; `model/sweep.py`), so the table is the same on any CPU
    machine; on CUDA one after another."""
    runs = [(name, preset, method) for name, preset, method in RUNS if method in METHOD_BUILDERS]
    for name, _, method in RUNS:
        if method not in METHOD_BUILDERS:
            log.warning("demo: %s skipped (method %s not available)", name, method)
    cpu = not torch.cuda.is_available()
    cfgs = [build_config(preset, data=cfg.processed, out=cfg.runs / f"demo-{preset}", seed=cfg.seed, epochs=cfg.epochs,
                         **({"threads": 1, "workers": 0} if cpu else {})) for _, preset, _ in runs]
    jobs = (cfg.jobs or cpu_cores()) if cpu else 1
    pending = [name for (name, _, _), c in zip(runs, cfgs) if not (Path(c.out) / "final.pt").exists()]
    if pending:
        _step(f"training {', '.join(pending)}" + (f", {min(jobs, len(pending))} at a time, one CPU thread each"
                                                 if cpu and jobs > 1 else ""))

    def done(c, final: Path, seconds: float) -> None:
        log.info("demo: %s trained in %.0f s -> %s", c.out, seconds, final)

    finals = train_all(cfgs, jobs, done)
    return {name: (method, final) for (name, _, method), final in zip(runs, finals)}


Row = tuple[str, str, dict[str, dict]]  # (name, method whose protocol scored it, {modality: retrieval result})


def retrieval_rows(cfg: DemoConfig, finals: dict[str, tuple[str, Path]]) -> list[Row]:
    """Each backbone's clips are decoded and encoded once (`prefetch_features`): every input view, and for the
    random init every protocol's feature, fills its cache in that pass; each retrieval then reads its own."""
    def base(source: SourceConfig, cache: Path) -> RetrievalConfig:
        return RetrievalConfig(data=cfg.processed, source=source, workers=cfg.workers, cache=cache)

    def inputs(method: str) -> tuple[str, ...]:  # the inputs the method's paper reports (DualVar: RGB only)
        return tuple(m for m in cfg.retrieval_modalities if m in protocol_for(method).inputs)

    def run(source: SourceConfig, method: str, out: Path, cache: Path) -> dict[str, dict]:
        return {m: evaluate_retrieval(dataclasses.replace(base(source, cache), modality=m, out=out / m).with_protocol(method))
                for m in inputs(method)}

    rows = []
    for name, (method, final) in finals.items():
        source, cache = SourceConfig(ckpt=final, runs=cfg.runs), final.parent / "eval" / "features"
        prefetch_features(base(source, cache), inputs(method), (protocol_for(method).feature,))
        rows.append((name, method, run(source, method, final.parent / "eval", cache)))
    iic = build_config(RUNS[0][1])  # the baseline is read against IIC's backbone and clips
    baseline = SourceConfig(ckpt=None, random_init=True, runs=cfg.runs, seed=cfg.seed, model=iic.model, frames=iic.frames,
                            crop=iic.crop)
    methods = sorted({method for method, _ in finals.values()})
    cache = cfg.runs / "demo-random-init" / "features"
    prefetch_features(base(baseline, cache), cfg.retrieval_modalities,
                      tuple(dict.fromkeys(protocol_for(m).feature for m in methods)))
    for method in methods:
        rows.append((f"random init ({method} protocol)", method,
                     run(baseline, method, cfg.runs / "demo-random-init" / method / "eval", cache)))
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
        lines.append(f"{name:{width}}  " + "  ".join(cells) + f"  {first['feature']}{', centred' if first['center'] else ''}")
    r0 = next(iter(rows[0][2].values()))
    classes = len(set(q["label"] for q in r0["queries"]))
    lines.append(f"retrieval top-k (%) of {r0['counts']['queries']} test videos against {r0['counts']['gallery']} train "
                 f"videos ({classes} classes: chance top-1 {100 / classes:.1f}%), mean of {r0['config']['clips']} clips, "
                 "features of the RGB / residual input, each method with its own protocol (- = an input its paper "
                 "does not report)")
    return lines


def run_demo(cfg: DemoConfig) -> list[str]:
    """Run everything; returns the lines of the final report (also saved as ``<runs>/demo.json``)."""
    t0 = _step("preparing the synthetic dataset (generate, extract, flow)")
    prepare_data(cfg)
    finals = train_runs(cfg)
    _step("retrieval")
    rows = retrieval_rows(cfg, finals)
    lines = table(rows)
    lines += [f"curves: {final.parent / 'curves.png'}" for _, final in finals.values()]
    lines += [f"retrieval picture: {Path(r['out']) / 'retrieval.png'}" for _, _, by_mod in rows for r in by_mod.values()]
    lines.append(f"demo time: {time.perf_counter() - t0:.0f} s")
    report = {"config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
              "rows": [{"name": n, "protocol": method,
                        **{m: {"topk": r["topk"], "checkpoint": r["checkpoint"]} for m, r in by_mod.items()}}
                       for n, method, by_mod in rows], "lines": lines}
    cfg.runs.mkdir(parents=True, exist_ok=True)
    (cfg.runs / "demo.json").write_text(json.dumps(report, indent=2))
    return lines
