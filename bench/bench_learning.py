"""Learning benchmark: does training beat no training, and IIC its CMC baseline? Over seeds, with spread.

On the synthetic motion benchmark (`iic-prep synth` defaults: 8 classes in 4 time-reversal pairs, 45 videos
each, one appearance per video; split 1 = 240 gallery and 120 independent query videos), each method is
trained with its tiny CPU preset for every seed (`iic train --preset P --seed S --threads T`), ``--jobs`` runs
side by side in worker processes (`model/sweep.py`: one thread each by default, the weights do not depend on
what trains beside them), and scored with its own paper's retrieval protocol (model/protocol.py), RGB and
residual input, 10 clips per video. A random-init backbone of the same seed is scored with each protocol.
For every model it also measures order sensitivity (model/sensitivity.py): mean cosine between a test clip's
feature and its shuffled / reversed / repeated versions, for each input view.

``--camera`` films the benchmark with one of `iic-prep synth`'s cameras (shake, pan, zoom, rotate, handheld;
the same law for every class); the data then goes to ``<root>-<camera>`` unless ``--root`` says otherwise. The
camera's motion is estimated (`iic-prep camera`) on every data set, so each model is also scored with the
residual after the camera's motion (``res-aligned``), and the ``*-aligned`` presets can train with it.
``--supervised VIEW`` adds the supervised ceiling: the same backbone trained with labels from random init on
VIEW input with the tiny preset's clips, crops, optimiser and schedule (`train_supervised`), scored like the
others.

    python bench/bench_learning.py [--seeds 0 1 2] [--root /tmp/iic-learning] [--camera shake]
        [--methods tiny cmc-tiny tiny-aligned ...] [--supervised res-aligned] [--jobs 2]
        [--inputs res res-stable]  # score on these inputs only (each costs a pass over 3,600 clips)

Reports mean +- sd over seeds of top-1/5/10 and, per seed, a 95% bootstrap interval of top-1 over test
groups (2,000 resamples of the query groups: one video per group here). Writes bench/out/learning-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchutil import cli, run_cli, write_json
from torch.utils.data import DataLoader

from iic.model import checkpoint
from iic.model.config import EVAL_VIEWS, build_config, modalities_for
from iic.model.data import augment
from iic.model.data.clips import ClipConfig, ClipDataset, EpochSampler, collate_clips
from iic.model.data.views import view_input
from iic.model.distributed import cpu_threads
from iic.model.evaluation.evaluate import RetrievalConfig, SourceConfig, evaluate_retrieval
from iic.model.evaluation.features import BackboneSource, checkpoint_source, load_backbone
from iic.model.evaluation.protocol import protocol_for
from iic.model.evaluation.sensitivity import order_sensitivity
from iic.model.nets.backbones import build_backbone
from iic.model.run.sweep import cpu_cores, side_by_side, train_all
from iic.model.run.train import build_optimizer, lr_factor
from iic.pipeline.names import SYNTH_CAMERAS

METHODS = {
    "tiny": "IIC (repeat)",
    "tiny-shuffle": "IIC (shuffle)",
    "tiny-reverse": "IIC (reverse, not the paper's)",
    "cmc-tiny": "CMC baseline",
    "dualvar-tiny": "DualVar",
    "tiny-aligned": "IIC (repeat), res-aligned",
    "cmc-tiny-aligned": "CMC baseline, res-aligned",
    "tiny-stable": "IIC (repeat), stabilised",
    "cmc-tiny-stable": "CMC baseline, stabilised",
}
INPUTS = ("res", "res-aligned", "res-stable", "rgb")  # scored by default (--inputs)


def prepare(root: Path, workers: int, camera: str = "still") -> Path:
    data = root / "data"
    run_cli([cli("iic-prep"), "synth", "--out", str(root / "raw"), "--camera", camera], quiet=True)
    run_cli(
        [
            cli("iic-prep"),
            "extract",
            "--root",
            str(root / "raw"),
            "--out",
            str(data),
            "--size",
            "96x128",
            "--workers",
            str(workers),
        ],
        quiet=True,
    )
    run_cli(
        [cli("iic-prep"), "camera", "--data", str(data / "ucf101"), "--workers", str(workers)], quiet=True
    )
    return data / "ucf101"


def group_of(video_id: str) -> str:
    """The UCF101 group of a video id ``Class/v_Class_gNN_cMM`` (clips of a group share their appearance)."""
    m = re.search(r"(v_.+_g\d+)_c\d+$", video_id)
    return m.group(1) if m else video_id


def bootstrap_top1(result: dict, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of top-1 when the query groups are resampled with replacement."""
    hits: dict[str, list[int]] = {}
    for q in result["queries"]:
        hits.setdefault(group_of(q["id"]), []).append(int(q["nearest_labels"][0] == q["label"]))
    groups = [np.array(h) for h in hits.values()]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        pick = rng.integers(len(groups), size=len(groups))
        sample = np.concatenate([groups[i] for i in pick])
        draws.append(100.0 * sample.mean())
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def score(
    data: Path,
    source: SourceConfig,
    method: str,
    out: Path,
    backbone,
    frames: int,
    stride: int,
    crop: int,
    seed: int,
    inputs: tuple[str, ...] = INPUTS,
) -> dict:
    entry = {}
    for m in inputs:
        r = evaluate_retrieval(
            RetrievalConfig(data=data, source=source, modality=m, out=out / m).with_protocol(method)
        )
        entry[m] = {
            "topk": {int(k): v for k, v in r["topk"].items() if int(k) in (1, 5, 10)},
            "top1_ci95": bootstrap_top1(r),
            "queries": r["counts"]["queries"],
            "groups": len({group_of(q["id"]) for q in r["queries"]}),
        }
    proto = protocol_for(method)
    entry["order_similarity"] = {
        view: order_sensitivity(
            backbone,
            data,
            1,
            frames,
            stride,
            crop,
            feature=proto.feature,
            center=proto.center,
            seed=seed,
            view=view,
        )
        for view in inputs
    }
    return entry


def summarise(runs: dict, inputs: tuple[str, ...] = INPUTS) -> list[str]:
    """Two tables: top-1 / top-5 per input view, and the order sensitivity per view (mean +- sd of seeds)."""
    lines = [
        "| model (protocol) | " + " | ".join(f"{m} top-1 | {m} top-5" for m in inputs) + " |",
        "|---|" + "---|---|" * len(inputs),
    ]

    def ms(per_seed, get, digits=1):
        v = np.array([get(e) for e in per_seed.values()])
        return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"

    for name, per_seed in runs.items():
        cells = [ms(per_seed, lambda e, m=m, k=k: e[m]["topk"][k]) for m in inputs for k in (1, 5)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | input | cos shuffled | cos reversed | cos repeated |",
        "|---|---|---|---|---|",
    ]
    for name, per_seed in runs.items():
        for m in inputs:
            cells = [ms(per_seed, lambda e, m=m, k=k: e["order_similarity"][m][k], 3) for k in BROKEN]
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + " |")
    return lines


BROKEN = ("shuffled", "reversed", "repeated")


def run_dir(root: Path, name: str, seed: int, epochs: int | None) -> Path:
    """A run's folder: ``runs/<name>-s<seed>``, with ``-e<epochs>`` before the seed when ``--epochs``
    overrides the presets', so that runs of another budget are never taken for these."""
    return root / "runs" / (f"{name}-s{seed}" if epochs is None else f"{name}-e{epochs}-s{seed}")


def train_supervised(data: Path, out: Path, view: str, seed: int, epochs: int | None) -> Path:
    """The supervised ceiling of one seed: the tiny preset's backbone, clips, crops, optimiser and schedule
    (Adam 1e-3, one warm-up epoch, cosine, 20 epochs of batch 8, one thread), trained with labels
    (cross-entropy of a linear layer on the pooled feature) from random init on ``view`` input. Saved as a
    checkpoint the evaluation reads: its config is the tiny preset's with this view and seed, its model the
    backbone, and ``epoch_loss`` the mean loss of every epoch."""
    final = out / "final.pt"
    if final.exists():
        return final
    cfg = build_config("tiny", data=data, out=out, seed=seed, view2=view, epochs=epochs, threads=1, workers=0)
    with cpu_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.model)
        clip_cfg = ClipConfig(cfg.frames, cfg.stride, modalities_for((view,)))
        dataset = ClipDataset(cfg.data, cfg.split, "train", clip_cfg)
        head = torch.nn.Linear(backbone.out_dim, len(dataset.store.classes))
        optimizer = build_optimizer([*backbone.parameters(), *head.parameters()], cfg)
        sampler = EpochSampler(dataset.n_videos, cfg.seed)
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collate_clips
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, len(loader)))
        aug = augment.AugmentConfig(crop=cfg.crop, flip=cfg.flip, camera_views=(view,))
        step, losses = 0, []
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            total = 0.0
            for batch in loader:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                crops = augment.sample_params(len(batch["label"]), augment.batch_hw(batch), aug, gen)
                x = view_input(augment.apply(augment.clips_of(batch, clip_cfg.modalities), crops, aug), view)
                loss = F.cross_entropy(head(backbone(x)["pool"]), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                step, total = step + 1, total + loss.item()
            losses.append(total / len(loader))
    model = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    state = {"config": cfg.to_dict(), "model": model, "n_data": dataset.n_videos, "epoch_loss": losses}
    checkpoint.save_atomic(state, final)
    return final


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--root", type=Path, default=None, help="[default: /tmp/iic-learning, -<camera> if moving]"
    )
    ap.add_argument(
        "--camera", default="still", choices=SYNTH_CAMERAS, help="the synthetic camera (iic-prep synth)"
    )
    ap.add_argument(
        "--supervised", nargs="*", default=[], choices=EVAL_VIEWS, help="supervised ceilings' inputs"
    )
    ap.add_argument(
        "--inputs",
        nargs="+",
        default=list(INPUTS),
        choices=EVAL_VIEWS,
        help="the input views each model is scored on",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each training run (the demo's: 1)")
    ap.add_argument("--jobs", type=int, default=cpu_cores(), help="training runs side by side")
    args = ap.parse_args()
    args.inputs = tuple(args.inputs)
    moving = args.camera != "still"
    args.root = args.root or Path("/tmp/iic-learning" + (f"-{args.camera}" if moving else ""))
    t0 = time.perf_counter()
    data = prepare(args.root, args.workers, args.camera)
    runs: dict[str, dict] = {}
    timings: dict[str, list[float]] = {}
    cfgs = [
        build_config(
            preset,
            data=data,
            out=run_dir(args.root, preset, seed, args.epochs),
            seed=seed,
            epochs=args.epochs,
            threads=args.threads,
            workers=0,
        )
        for seed in args.seeds
        for preset in args.methods
    ]
    train_all(
        cfgs,
        args.jobs,
        done=lambda c, final, sec: timings.setdefault(Path(c.out).name.rsplit("-s", 1)[0], []).append(sec),
    )
    ceilings = [
        functools.partial(
            train_supervised,
            data,
            run_dir(args.root, f"supervised-{v}", seed, args.epochs),
            v,
            seed,
            args.epochs,
        )
        for seed in args.seeds
        for v in args.supervised
    ]
    for i, _, sec in side_by_side(ceilings, args.jobs):
        timings.setdefault(f"supervised-{Path(ceilings[i].args[1]).name}", []).append(sec)
    for seed in args.seeds:
        for preset in args.methods:
            cfg = build_config(
                preset,
                data=data,
                out=run_dir(args.root, preset, seed, args.epochs),
                seed=seed,
                epochs=args.epochs,
            )
            final = Path(cfg.out) / "final.pt"
            src, state = checkpoint_source(final)
            net = load_backbone(src, state)
            name = f"{METHODS[preset]} ({cfg.method})"
            runs.setdefault(name, {})[seed] = score(
                data,
                SourceConfig(ckpt=final),
                cfg.method,
                Path(cfg.out) / "eval",
                net,
                cfg.frames,
                cfg.stride,
                cfg.crop,
                seed,
                args.inputs,
            )
            print(name, seed, json.dumps(runs[name][seed]), flush=True)
        tiny = build_config("tiny")
        for method in sorted({build_config(p).method for p in args.methods}):
            src = BackboneSource(None, tiny.model, tiny.frames, tiny.stride, tiny.crop, seed)
            name = f"random init ({method})"
            runs.setdefault(name, {})[seed] = score(
                data,
                SourceConfig(
                    random_init=True,
                    model=tiny.model,
                    frames=tiny.frames,
                    crop=tiny.crop,
                    seed=seed,
                    runs=args.root / "runs",
                ),
                method,
                run_dir(args.root, f"random-{method}", seed, None),  # no training: no budget
                load_backbone(src),
                tiny.frames,
                tiny.stride,
                tiny.crop,
                seed,
                args.inputs,
            )
            print(name, seed, json.dumps(runs[name][seed]), flush=True)
        for view in args.supervised:
            final = run_dir(args.root, f"supervised-{view}", seed, args.epochs) / "final.pt"
            src, state = checkpoint_source(final)
            name = f"supervised ceiling, {view} input (iic)"
            entry = score(
                data,
                SourceConfig(ckpt=final),
                "iic",
                final.parent / "eval",
                load_backbone(src, state),
                src.frames,
                src.stride,
                src.crop,
                seed,
                args.inputs,
            )
            runs.setdefault(name, {})[seed] = {**entry, "epoch_loss": state["epoch_loss"]}
            print(name, seed, json.dumps(runs[name][seed]), flush=True)
    lines = summarise(runs, args.inputs)
    print("\n".join(lines))
    write_json(
        Path(__file__).parent / "out",
        "learning" + (f"-{args.camera}" if moving else ""),
        {
            "date": dt.date.today().isoformat(),
            "camera": args.camera,
            "machine": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "train_threads": args.threads,
            "jobs": args.jobs,
            "seeds": args.seeds,
            "inputs": list(args.inputs),
            "train_seconds": timings,
            "total_seconds": time.perf_counter() - t0,
            "runs": runs,
            "table": lines,
        },
    )


if __name__ == "__main__":
    main()
