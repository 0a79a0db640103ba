"""Evaluation benchmark: feature-extraction clips/s and end-to-end `iic eval retrieval` time.

On the synthetic motion dataset (generated and extracted into a temporary folder unless --data is
given), with a random-init tiny backbone (the weights do not change the speed):

    python bench/bench_eval.py [--data DATA] [--threads N] [--out bench/out/eval.json]

Reports clips/s of the batched extraction (inference_mode, centre crop, conv5 feature), the time of the
RGB + residual features as two passes at batch 16 against one pass at batch 64 (the demo's way) and the wall
time of two CLI runs of `iic eval retrieval`: the first extracts, the second reads the feature cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from click.testing import CliRunner

from iic.cli import main, prep
from iic.model.data.clips import ClipConfig, ClipDataset
from iic.model.evaluation.features import BackboneSource, extract, load_backbone
from iic.pipeline.synth import SynthConfig, generate


def make_data(root: Path) -> Path:
    generate(SynthConfig(out=root / "raw", classes=6, per_class=12, frames=40, height=96, width=128))
    res = CliRunner().invoke(
        prep,
        [
            "extract",
            "--root",
            str(root / "raw"),
            "--out",
            str(root / "data"),
            "--size",
            "72x96",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    return root / "data" / "ucf101"


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared 2-core box)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "eval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_data(Path(tmp))
        src = BackboneSource(None, "r3d-tiny", frames=16, stride=1, crop=64)
        rows = {}
        for batch in (8, 32):
            ds = ClipDataset(
                data, 1, "train", ClipConfig(frames=16, modalities=("res",), test_clips=10), mode="test"
            )
            _, rate, _ = extract(
                load_backbone(src), ds, ("res",), ("conv5",), 64, torch.device("cpu"), batch_size=batch
            )
            rows[f"extract_clips_per_s_batch{batch}"] = round(rate, 1)
        # The demo's retrieval: RGB and residual features of one backbone. Before: one pass per view at
        # batch 16; now: one pass for both views (one decode per clip) at batch 64. Interleaved, best of 2
        # each.
        ds2 = ClipDataset(
            data, 1, "train", ClipConfig(frames=16, modalities=("rgb", "res"), test_clips=10), mode="test"
        )
        net, cpu = load_backbone(src), torch.device("cpu")
        two = {"separate_b16": [], "one_pass_b64": []}
        for _ in range(2):
            t0 = time.perf_counter()
            for view in ("rgb", "res"):
                extract(net, ds2, (view,), ("conv5",), 64, cpu, batch_size=16)
            two["separate_b16"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            extract(net, ds2, ("rgb", "res"), ("conv5",), 64, cpu, batch_size=64)
            two["one_pass_b64"].append(time.perf_counter() - t0)
        rows.update({f"two_views_{k}_s": round(min(v), 2) for k, v in two.items()})
        rows["two_views_speedup"] = round(min(two["separate_b16"]) / min(two["one_pass_b64"]), 2)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = CliRunner().invoke(
                main,
                [
                    "eval",
                    "retrieval",
                    "--data",
                    str(data),
                    "--random-init",
                    "--model",
                    "r3d-tiny",
                    "--frames",
                    "16",
                    "--crop",
                    "64",
                    "--workers",
                    "0",
                    "--device",
                    "cpu",
                    "--out",
                    str(Path(tmp) / "eval"),
                ],
            )
            assert res.exit_code == 0, res.output
            times.append(round(time.perf_counter() - t0, 2))
        rows.update(
            retrieval_end_to_end_s=times[0],
            retrieval_cached_s=times[1],
            videos=ds.n_videos,
            threads=args.threads,
            machine=platform.processor() or platform.machine(),
            torch=torch.__version__,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main_bench()
