"""Learning benchmark: does training beat no training, and IIC its CMC baseline? Over seeds, with spread.

On the synthetic motion benchmark (`iic-prep synth` defaults: 8 classes in 4 time-reversal pairs, 45 videos
each, one appearance per video; split 1 = 240 gallery and 120 independent query videos), each method is
trained with its tiny CPU preset for every seed (`iic train --preset P --seed S --threads T`), ``--jobs`` runs
side by side in worker processes (`model/sweep.py`: one thread each by default, the weights do not depend on
what trains beside them), and scored with its own paper's retrieval protocol (model/evaluation/protocol.py),
RGB and residual input, 10 clips per video. A random-init backbone of the same seed is scored with each
protocol. For every model it also measures order sensitivity (model/evaluation/sensitivity.py): mean cosine
between a test clip's feature and its shuffled / reversed / repeated versions.

    python bench/bench_learning.py [--seeds 0 1 2] [--root /tmp/iic-learning] [--methods tiny ...] [--jobs 2]

Reports mean +- sd over seeds of top-1/5/10 and, per seed, a 95% bootstrap interval of top-1 over test
groups (2,000 resamples of the query groups: one video per group here). Writes bench/out/learning-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
from benchutil import cli, run_cli, write_json

from iic.model.config import build_config
from iic.model.evaluation.evaluate import RetrievalConfig, SourceConfig, evaluate_retrieval
from iic.model.evaluation.features import BackboneSource, checkpoint_source, load_backbone
from iic.model.evaluation.protocol import protocol_for
from iic.model.evaluation.sensitivity import order_sensitivity
from iic.model.run.sweep import cpu_cores, train_all

METHODS = {
    "tiny": "IIC (repeat)",
    "tiny-shuffle": "IIC (shuffle)",
    "tiny-reverse": "IIC (reverse, not the paper's)",
    "cmc-tiny": "CMC baseline",
    "dualvar-tiny": "DualVar",
}
MODALITIES = ("res", "rgb")


def prepare(root: Path, workers: int) -> Path:
    data = root / "data"
    run_cli([cli("iic-prep"), "synth", "--out", str(root / "raw")], quiet=True)
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
) -> dict:
    entry = {}
    for m in MODALITIES:
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
    entry["order_similarity"] = order_sensitivity(
        backbone, data, 1, frames, stride, crop, feature=proto.feature, center=proto.center, seed=seed
    )
    return entry


def summarise(runs: dict) -> list[str]:
    lines = [
        "| model (protocol) | res top-1 | res top-5 | rgb top-1 | rgb top-5 | cos shuffled | cos reversed "
        "| cos repeated |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(per_seed: dict, get) -> str:
        v = np.array([get(e) for e in per_seed.values()])
        return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}"

    def mc(per_seed: dict, key: str) -> str:
        v = np.array([e["order_similarity"][key] for e in per_seed.values()])
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"

    for name, per_seed in runs.items():
        top = [
            ms(per_seed, lambda e, v=v, k=k: e[v]["topk"][k])
            for v, k in (("res", 1), ("res", 5), ("rgb", 1), ("rgb", 5))
        ]
        cos = [mc(per_seed, key) for key in ("shuffled", "reversed", "repeated")]
        lines.append("| " + " | ".join([name, *top, *cos]) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--root", type=Path, default=Path("/tmp/iic-learning"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each training run (the demo's: 1)")
    ap.add_argument("--jobs", type=int, default=cpu_cores(), help="training runs side by side")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = prepare(args.root, args.workers)
    runs: dict[str, dict] = {}
    timings: dict[str, list[float]] = {}
    cfgs = [
        build_config(
            preset,
            data=data,
            out=args.root / "runs" / f"{preset}-s{seed}",
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
    for seed in args.seeds:
        for preset in args.methods:
            cfg = build_config(
                preset, data=data, out=args.root / "runs" / f"{preset}-s{seed}", seed=seed, epochs=args.epochs
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
                args.root / "runs" / f"random-{method}-s{seed}",
                load_backbone(src),
                tiny.frames,
                tiny.stride,
                tiny.crop,
                seed,
            )
            print(name, seed, json.dumps(runs[name][seed]), flush=True)
    lines = summarise(runs)
    print("\n".join(lines))
    write_json(
        Path(__file__).parent / "out",
        "learning",
        {
            "date": dt.date.today().isoformat(),
            "machine": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "train_threads": args.threads,
            "jobs": args.jobs,
            "seeds": args.seeds,
            "train_seconds": timings,
            "total_seconds": time.perf_counter() - t0,
            "runs": runs,
            "table": lines,
        },
    )


if __name__ == "__main__":
    main()
