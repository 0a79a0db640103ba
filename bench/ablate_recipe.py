"""Recipe ablation for the tiny CPU presets: one IIC/CMC training variant per call, fast enough to compare
many.

The training step is the library's (`IICMemory`, `augment`, `intra_negative`, the backbones); what differs
from `iic train` is only speed: every clip of the split is decoded into memory once, there are no loader
workers and no checkpoints. Per epoch it prints the loss and, in the first batch, the mean positive logit,
the mean bank-negative logit and the mean logit of the video's own intra-negative row (all times tau, i.e.
cosines), which shows *why* a variant is stuck; every ``eval_every`` epochs, retrieval top-1 on the test
split (one centre clip, centre crop) for residual / RGB input with conv5 (IIC's protocol) and centred pool
features. ``sup=1`` trains the same backbone with labels instead (cross-entropy), the upper bound of what
the architecture learns from these clips in the same number of steps.

    python bench/ablate_recipe.py data=DATA/ucf101 [key=value ...]

Keys (defaults in ``OPTIONS``): epochs, bs, lr, opt (adam|sgd), K, tau, m, neg (repeat|shuffle|none),
head (none|bn|mlp: bn = affine-free BatchNorm, the CenterHead), norm (L2-normalise features), sched
(step = the paper's multi-step | cos; `model/train.py: lr_factor`), warm (warm-up epochs), pos (bank|live),
fill (1: fill the banks with current features before epoch 1, 2: before every epoch), seed, crop, T, threads,
clips (test clips per video: 1 = the centre clip, 10 = the retrieval protocol's clips, features averaged).
Results: BENCHMARKS.md, "Learning".
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iic.model.config import TrainConfig, backbone_config
from iic.model.data import augment
from iic.model.data.clips import eval_starts
from iic.model.evaluation.protocol import iic_chance_loss
from iic.model.evaluation.retrieval import retrieval_topk
from iic.model.methods.iic import intra_negative, nce_loss
from iic.model.methods.variants import LiveMemory
from iic.model.nets.backbones import build_backbone, retrieval_feature
from iic.model.nets.heads import CenterHead, ProjectionHead, l2_normalize
from iic.model.run.train import lr_factor
from iic.pipeline.reader import VideoStore

OPTIONS = dict(
    data="data/synth/ucf101",
    epochs=20,
    bs=8,
    lr=1e-3,
    opt="adam",
    K=16,
    tau=0.07,
    m=0.5,
    neg="repeat",
    head="none",
    norm=1,
    sched="step",
    warm=0,
    pos="bank",
    fill=0,
    seed=0,
    crop=64,
    T=16,
    wd=1e-4,
    eval_every=5,
    model="r3d-tiny",
    threads=2,
    sup=0,
    bneg=0,
    clips=1,
)


def parse(argv: list[str]) -> dict:
    o = dict(OPTIONS)
    for arg in argv:
        key, value = arg.split("=", 1)
        if key not in o:
            raise SystemExit(f"unknown option {key!r}; choose from {', '.join(o)}")
        o[key] = type(o[key])(value)
    return o


def load(store: VideoStore, kind: str) -> tuple[list[dict], np.ndarray]:
    rows = store.ok_rows(1, kind)
    return [store.read_clip(r.id, ["rgb", "res"], 0, r.n_frames) for r in rows], np.array(
        [r.label for r in rows]
    )


def batch_of(videos: list[dict], idx, starts, T: int) -> dict[str, torch.Tensor]:
    return {
        m: torch.stack(
            [
                torch.from_numpy(videos[i][m][s : s + T]).permute(3, 0, 1, 2)
                for i, s in zip(idx, starts, strict=True)
            ]
        )
        for m in ("rgb", "res")
    }


def main() -> None:
    o = parse(sys.argv[1:])
    torch.set_num_threads(o["threads"])
    torch.manual_seed(o["seed"])
    store = VideoStore(o["data"])
    train_set, y_train = load(store, "train")
    test_set, y_test = load(store, "test")
    backbone = build_backbone(backbone_config(o["model"]))
    d = backbone.out_dim
    head = {"none": None, "bn": CenterHead(d), "mlp": ProjectionHead(d)}[o["head"]]
    dim = 128 if o["head"] == "mlp" else d
    classifier = nn.Linear(d, len(store.classes)) if o["sup"] else None
    params = [
        *backbone.parameters(),
        *(head.parameters() if head else []),
        *(classifier.parameters() if classifier else []),
    ]
    memory = LiveMemory(
        len(train_set),
        dim,
        K=o["K"],
        tau=o["tau"],
        m=o["m"],
        intra_neg=o["neg"] != "none",
        normalize=bool(o["norm"]),
        positive=o["pos"],
        batch_negatives=bool(o["bneg"]),
        generator=torch.Generator().manual_seed(o["seed"]),
    )
    opt = (
        torch.optim.Adam(params, lr=o["lr"], weight_decay=o["wd"])
        if o["opt"] == "adam"
        else torch.optim.SGD(params, lr=o["lr"], momentum=0.9, weight_decay=o["wd"])
    )
    steps_per_epoch = len(train_set) // o["bs"]
    schedule = TrainConfig(
        epochs=o["epochs"],
        warmup_epochs=o["warm"],
        schedule={"step": "multistep", "cos": "cosine"}[o["sched"]],
    )  # iic train's own schedule
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, steps_per_epoch))
    aug = augment.AugmentConfig(crop=o["crop"])

    def embed(x):
        f = backbone(x)["pool"]
        return head(f) if head is not None else f

    def views(videos, idx, rng):
        starts = [int(rng.integers(0, videos[i]["rgb"].shape[0] - o["T"] + 1)) for i in idx]
        raw = batch_of(videos, idx, starts, o["T"])
        g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        v = augment.apply(raw, augment.sample_params(len(idx), raw["rgb"].shape[-2:], aug, g), aug)
        x1 = augment.view_input(v, "rgb")
        xn = intra_negative(x1, o["neg"], g) if o["neg"] != "none" else None
        return x1, augment.view_input(v, "res"), xn

    @torch.no_grad()
    def fill_banks(epoch: int) -> None:
        rng = np.random.default_rng([o["seed"], epoch, 99])
        for b in range(0, len(train_set), o["bs"]):
            idx = np.arange(b, min(b + o["bs"], len(train_set)))
            x1, x2, xn = views(train_set, idx, rng)
            ix = torch.as_tensor(idx)
            memory.M1.memory[ix], memory.M2.memory[ix] = l2_normalize(embed(x1)), l2_normalize(embed(x2))
            if xn is not None:
                memory.Mn.memory[ix] = l2_normalize(embed(xn))

    @torch.no_grad()
    def features(videos, modality, kind):
        backbone.eval()
        test_aug = augment.AugmentConfig(crop=o["crop"], train=False)
        per_clip = []
        for c in range(o["clips"]):  # clips=1: the centre clip; else the retrieval protocol's clips, averaged
            out = []
            for i in range(0, len(videos), 32):
                idx = list(range(i, min(i + 32, len(videos))))
                starts = [int(eval_starts(videos[j]["rgb"].shape[0], o["T"], 1, o["clips"])[c]) for j in idx]
                raw = batch_of(videos, idx, starts, o["T"])
                v = augment.apply(
                    raw, augment.sample_params(len(idx), raw["rgb"].shape[-2:], test_aug), test_aug
                )
                out.append(retrieval_feature(backbone(augment.view_input(v, modality)), kind))
            per_clip.append(torch.cat(out))
        backbone.train()
        return torch.stack(per_clip).mean(0)

    def evaluate() -> dict[str, float]:
        return {
            f"{m}-{kind}{'c' if c else ''}": retrieval_topk(
                features(test_set, m, kind), y_test, features(train_set, m, kind), y_train, ks=(1,), center=c
            ).topk[1]
            for m in ("res", "rgb")
            for kind, c in (("conv5", False), ("pool", True))
        }

    print("init", json.dumps(evaluate()), flush=True)
    for epoch in range(o["epochs"]):
        if o["fill"] == 2 or (o["fill"] == 1 and epoch == 0):
            fill_banks(epoch)
        rng = np.random.default_rng([o["seed"], epoch])
        perm = rng.permutation(len(train_set))
        losses, t0 = [], time.time()
        for b in range(steps_per_epoch):
            idx = perm[b * o["bs"] : (b + 1) * o["bs"]]
            x1, x2, xn = views(train_set, idx, rng)
            if classifier is not None:
                loss = F.cross_entropy(classifier(backbone(x2)["pool"]), torch.as_tensor(y_train[idx]))
            else:
                f = [embed(x) for x in (x1, x2, xn) if x is not None]
                z1, z2 = memory(
                    f[0],
                    f[1],
                    f[2] if len(f) > 2 else None,
                    torch.as_tensor(idx),
                    torch.Generator().manual_seed(b),
                )
                loss = nce_loss(z1, z2)
                if b == 0:
                    own = z1[:, o["K"] + 1].mean() * o["tau"] if o["neg"] != "none" else float("nan")
                    print(
                        f"   cosines: positive {z1[:, 0].mean() * o['tau']:.3f}  bank negatives "
                        f"{z1[:, 1 : o['K'] + 1].mean() * o['tau']:.3f}  own intra-negative {own:.3f}",
                        flush=True,
                    )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        line = (
            f"epoch {epoch + 1} loss {np.mean(losses):.3f} lr {opt.param_groups[0]['lr']:.2e} "
            f"{time.time() - t0:.1f}s"
        )
        if (epoch + 1) % o["eval_every"] == 0 or epoch + 1 == o["epochs"]:
            line += " " + json.dumps(evaluate())
        print(line, flush=True)
    if not o["sup"]:
        print(
            "chance loss "
            f"{iic_chance_loss(o['K'], o['neg'] != 'none', batch=o['bs'] if o['bneg'] else 0):.3f}",
            json.dumps(o),
        )


if __name__ == "__main__":
    main()
