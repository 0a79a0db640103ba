"""Run by tests/test_distributed.py under ``torchrun`` (2 CPU ranks, gloo): trains a run and records, per
rank, what a distributed run must keep apart and what it must keep equal.

    torchrun --standalone --nproc_per_node 2 tests/ddp_probe.py OUT DATA MODE

Records (``OUT/rank<r>.json``): every crop offset drawn, every integer draw of the step (intra-negative
frames and bank indices), how many clips each rank's monitor encoded, and a fingerprint of the weights and of
the memory banks at the end. MODE ``diverge`` shifts one weight of rank 1 after the first epoch: the run must
stop with its one-line error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from iic.model.config import build_config
from iic.model.data import augment
from iic.model.evaluation import monitor as monitor_mod
from iic.model.methods import iic
from iic.model.run import train as train_mod


def main() -> None:
    out, data, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])
    seen: dict[str, list] = {"offsets": [], "draws": [], "monitor_clips": []}

    sample_params = augment.sample_params

    def record_params(batch_size, in_hw, cfg, *args, **kwargs):
        params = sample_params(batch_size, in_hw, cfg, *args, **kwargs)
        if cfg.train:  # a training crop (the monitor's are centre crops)
            seen["offsets"].append(params.offsets.tolist())
        return params

    randint = iic._randint

    def record_randint(high, size, generator, device):
        drawn = randint(high, size, generator, device)
        seen["draws"].append(drawn.tolist())
        return drawn

    features = monitor_mod.Monitor._features

    def record_monitor(self, backbone, dataset, feature, name):
        share = len(range(self.rank, len(dataset), self.world))
        seen["monitor_clips"].append(share)
        return features(self, backbone, dataset, feature, name)

    epoch_fn = train_mod.train_one_epoch

    def diverging_epoch(run, *args):
        meter = epoch_fn(run, *args)
        if mode == "diverge" and run.dist.rank == 1 and run.loop.epoch == 0:
            with torch.no_grad():
                next(run.encoder.parameters()).add_(1e-3)
        return meter

    augment.sample_params = record_params
    iic._randint = record_randint
    monitor_mod.Monitor._features = record_monitor
    train_mod.train_one_epoch = diverging_epoch

    cfg = build_config(
        "r3d-res-repeat",
        model="r3d-tiny",
        data=data,
        out=out / "run",
        crop=32,
        frames=8,
        batch_size=4,
        K=16,
        epochs=2,
        workers=0,
        device="cpu",
        seed=0,
        monitor_every=1,
    )
    run_holder = {}
    build_run = train_mod.build_run

    def keep_run(c):
        run_holder["run"] = build_run(c)
        return run_holder["run"]

    train_mod.build_run = keep_run
    train_mod.train(cfg, progress=False)
    run = run_holder["run"]
    seen["weights"] = float(sum(p.detach().double().sum() for p in run.encoder.parameters()))
    seen["banks"] = float(sum(b.double().sum() for b in run.loop.state.buffers()))
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
