"""`iic eval retrieval | linear | recognition` through the CLI on a tiny synthetic dataset.

One module-scoped dataset (3 motion classes x 6 videos, 24 frames at 40x52, plus one listed test video
that does not exist, so extraction fails on it) and one 1-epoch tiny checkpoint serve every test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import run_prep

from iic.cli import main
from iic.model.checkpoint import load, save_atomic
from iic.model.config import backbone_config
from iic.model.evaluation.evaluate import (
    LinearConfig,
    RetrievalConfig,
    SourceConfig,
    evaluate_retrieval,
    knn_predict,
    logistic_regression,
    prefetch_features,
)
from iic.model.evaluation.features import backbone_state
from iic.model.evaluation.retrieval import retrieval_topk
from iic.model.nets.backbones import build_backbone
from iic.pipeline.reader import VideoStore
from iic.pipeline.synth import SynthConfig, generate

MISSING = "MoveLeft/v_MoveLeft_g99_c01"
FAST = ["--workers", "0", "--device", "cpu", "--clips", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_iic(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """(data folder, checkpoint) of the tiny synthetic dataset and a 1-epoch tiny IIC run."""
    root = tmp_path_factory.mktemp("eval")
    raw = root / "raw"
    generate(SynthConfig(out=raw, classes=3, per_class=6, frames=24, height=48, width=64, seed=3))
    with open(raw / "ucfTrainTestlist" / "testlist01.txt", "ab") as f:  # listed but absent: must be reported
        f.write(f"{MISSING}.avi\r\n".encode())
    res = run_prep("extract", "--root", raw, "--out", root / "data", "--size", "40x52", "--workers", "1")
    assert res.exit_code == 3, res.output  # 3 = some videos failed (the missing one)
    data = root / "data" / "ucf101"
    run_iic(
        "train",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        root / "runs" / "a",
        "--crop",
        "32",
        "--frames",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    return data, root / "runs" / "a" / "final.pt"


def retrieval(data, *args, ok=True):
    return run_iic("eval", "retrieval", "--data", data, *FAST, *args, ok=ok)


def error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# an independent feature computation: numpy crops and the documented input mapping, no project loader


def independent_features(
    data: Path, ckpt: Path, split_kind: str, clips: int
) -> tuple[np.ndarray, np.ndarray]:
    state = load(ckpt)
    cfg = state["config"]
    net = build_backbone(backbone_config(cfg["model"])).eval()
    net.load_state_dict(backbone_state(state["model"])[0])
    store = VideoStore(data)
    T, crop = cfg["frames"], cfg["crop"]
    feats, labels = [], []
    for row in store.ok_rows(1, split_kind):
        clip_feats = []
        for centre in np.linspace(T / 2, row.n_frames - T / 2, clips):  # REFERENCE: linspace(8, L-8, 10)
            start = int(np.clip(np.round(centre - T / 2), 0, row.n_frames - T))
            idx = (start + np.arange(T)) % row.n_frames
            q = store.read(row.id, "res", 0, row.n_frames)[idx].astype(np.float32)  # (T, H, W, 3)
            H, W = q.shape[1:3]
            top, left = (H - crop) // 2, (W - crop) // 2
            x = ((q - 128.0) / 127.5 + 1.0) / 2.0  # residual -> [0, 1] encoder input
            x = torch.from_numpy(x[:, top : top + crop, left : left + crop].transpose(3, 0, 1, 2).copy())[
                None
            ]
            with torch.no_grad():
                conv5 = net(x)["conv5"]
            clip_feats.append(F.max_pool3d(conv5, (1, 2, 2), (1, 2, 2)).flatten(1)[0].double().numpy())
        feats.append(np.mean(clip_feats, axis=0))
        labels.append(row.label)
    return np.array(feats), np.array(labels)


def test_retrieval_every_query_matches_independent_features(world, tmp_path, figures):
    data, trained = world
    ckpt = (
        tmp_path / "run" / "final.pt"
    )  # a run of its own: its feature cache (run/eval/features) is this test's
    ckpt.parent.mkdir()
    ckpt.write_bytes(trained.read_bytes())
    res = retrieval(data, "--ckpt", ckpt, "--out", tmp_path, "--batch-size", "5")
    assert figures[-1]["path"] == tmp_path / "retrieval.png"  # the picture names the run and the view
    assert figures[-1]["title"].startswith(f"run {ckpt.parent.name}: retrieval on res features")
    out = json.loads((tmp_path / "retrieval.json").read_text())
    store = VideoStore(data)
    listed_test = [r for r in store.rows if r.in_list(1, "test")]
    assert (
        out["counts"]["queries"] == len(listed_test) - 1 == len(out["queries"])
    )  # every query but the failed one
    assert out["counts"]["failed_queries"] == 1 and out["failed"]["test"][0]["id"] == MISSING
    assert MISSING in res.output  # the failed video is reported on the terminal
    assert out["counts"]["gallery"] == len(store.ok_rows(1, "train"))
    assert out["capped"] == [20, 50] and "capped at the gallery size 12" in res.output
    # the features are the documented ones (computed here without the project's loader and augmentation) ...
    cached = {}
    for subset in ("train", "test"):
        with np.load(
            next((ckpt.parent / "eval" / "features").glob(f"features-{subset}-res-conv5-*.npz"))
        ) as z:
            cached[subset] = (z["features"], z["labels"])
        mine, labels = independent_features(data, ckpt, subset, 2)
        np.testing.assert_array_equal(labels, cached[subset][1])
        np.testing.assert_allclose(cached[subset][0], mine, rtol=1e-4, atol=1e-5 * np.abs(mine).max())
    # ... and the reported result is exactly retrieval_topk on them, query by query (no dropped tail)
    ref = retrieval_topk(cached["test"][0], cached["test"][1], cached["train"][0], cached["train"][1])
    assert out["topk"] == {str(k): v for k, v in ref.topk.items()}
    gallery_ids = [r.id for r in store.ok_rows(1, "train")]
    for i, query in enumerate(out["queries"]):
        assert query["nearest"] == [gallery_ids[j] for j in ref.indices[i]]
        np.testing.assert_allclose(query["similarities"], ref.similarities[i], atol=1e-5)
    assert (tmp_path / "retrieval.png").stat().st_size > 1000
    lines = res.output.splitlines()
    at = next(i for i, line in enumerate(lines) if "retrieval of 6 queries against 12 gallery" in line)
    header, values = lines[at + 1], lines[at + 2]
    assert header.split() == ["top1", "top5", "top10", "top20", "top50"]
    assert [float(v) for v in values.split()] == pytest.approx(
        [out["topk"][k] for k in ("1", "5", "10", "20", "50")], abs=0.05
    )


def test_feature_cache_hit_and_invalidation(world, tmp_path):
    data, ckpt = world
    ck = tmp_path / "copy.pt"
    ck.write_bytes(ckpt.read_bytes())
    assert "features extracted" in retrieval(data, "--ckpt", ck, "--out", tmp_path, "--split", "1").output
    first = json.loads((tmp_path / "retrieval.json").read_text())
    assert first["cached"] is False
    second = retrieval(data, "--ckpt", ck, "--out", tmp_path)
    assert "features read from cache" in second.output
    assert json.loads((tmp_path / "retrieval.json").read_text())["topk"] == first["topk"]
    st = ck.stat()
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a retrained / replaced checkpoint
    assert "features extracted" in retrieval(data, "--ckpt", ck, "--out", tmp_path).output
    assert "features read from cache" in retrieval(data, "--ckpt", ck, "--out", tmp_path).output
    for option in (["--modality", "rgb", "--clips", "1"], ["--crop", "24", "--clips", "1"]):
        assert "features extracted" in retrieval(data, "--ckpt", ck, "--out", tmp_path, *option).output, (
            option
        )


def test_feature_cache_follows_the_pixels_not_the_manifest(world, tmp_path):
    """Re-extracting the same video list into the same folder with other pixels (--quality) leaves the
    manifest as it was; the cache is keyed by what a reader gets (`VideoStore.identity`), so it is not
    read."""
    data, ckpt = world
    raw = data.parent.parent / "raw"
    for quality, expect in (
        (90, "features extracted"),
        (90, "features read from cache"),
        (60, "features extracted"),
    ):
        res = run_prep(
            "extract",
            "--root",
            raw,
            "--out",
            tmp_path / "d",
            "--size",
            "40x52",
            "--workers",
            "1",
            "--quality",
            quality,
            *(["--overwrite"] if quality == 60 else []),
        )
        assert res.exit_code == 3, res.output
        out = retrieval(tmp_path / "d" / "ucf101", "--ckpt", ckpt, "--out", tmp_path / "eval")
        assert expect in out.output, (quality, out.output)


def test_one_pass_fills_every_view_and_feature(world, tmp_path):
    """`prefetch_features` decodes and encodes each clip once for two views x two features; each retrieval
    after it reads its own cache file, and its numbers are those of a retrieval that extracted alone."""
    data, ckpt = world
    base = RetrievalConfig(
        data=data, source=SourceConfig(ckpt=ckpt), clips=2, workers=0, device="cpu", cache=tmp_path / "shared"
    )
    prefetch_features(base, ("rgb", "res"), ("conv5", "pool"))
    files = sorted(p.name.split("-")[1:4] for p in (tmp_path / "shared").glob("features-*.npz"))
    assert files == sorted(
        [s, v, f] for s in ("train", "test") for v in ("rgb", "res") for f in ("conv5", "pool")
    )
    for view in ("rgb", "res"):
        for feature in ("conv5", "pool"):
            cfg = dataclasses.replace(base, modality=view, feature=feature, out=tmp_path / view / feature)
            shared = evaluate_retrieval(cfg)
            alone = evaluate_retrieval(
                dataclasses.replace(
                    cfg,
                    cache=tmp_path / "alone" / view / feature / "cache",
                    out=tmp_path / "alone" / view / feature,
                )
            )
            assert shared["cached"] and not alone["cached"]
            assert shared["topk"] == alone["topk"] and shared["queries"] == alone["queries"], (view, feature)


def test_random_init_merge_center(world, tmp_path):
    data, ckpt = world
    run = ckpt.parent.parent  # the newest final.pt under --run sets the random-init config
    single = retrieval(data, "--random-init", "--run", run, "--feature", "pool", "--out", tmp_path / "a")
    a = json.loads((tmp_path / "a" / "retrieval.json").read_text())
    assert a["backbone"]["random_init"] and a["backbone"]["model"] == "r3d-tiny" and a["feature_dim"] == 64
    assert "random-init r3d-tiny" in single.output
    # the config came from a run the user did not name: said on the first line of stderr, and in the JSON
    assert single.stderr.splitlines()[0] == (
        f"backbone picked for you: random-init r3d-tiny (seed 0) (model, clip and "
        f"crop of {ckpt}; --model to choose)"
    ), single.output
    assert a["chosen"] == f"model, clip and crop of {ckpt}; --model to choose"
    named = retrieval(data, "--ckpt", ckpt, "--feature", "pool", "--out", tmp_path / "n")
    assert "picked for you" not in named.output
    merged = retrieval(
        data,
        "--random-init",
        "--run",
        run,
        "--feature",
        "pool",
        "--merge",
        "--center",
        "--out",
        tmp_path / "b",
    )
    b = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert b["feature_dim"] == 2 * a["feature_dim"] and b["center"] is True
    assert "each L2-normalised" in merged.output
    # the default checkpoint is the only final.pt under --run
    c = retrieval(data, "--run", run, "--out", tmp_path / "c")
    assert str(ckpt) in c.output


def test_without_ckpt_one_run_is_taken_and_named_and_several_are_refused(world, tmp_path):
    """No --ckpt: the one run under --run is evaluated and named first on stderr; when several runs could be
    meant, none is guessed: a usage error names them, newest first."""
    data, ckpt = world
    runs = tmp_path / "runs"
    now = ckpt.stat().st_mtime_ns
    only = runs / "b-older" / "final.pt"
    only.parent.mkdir(parents=True)
    only.write_bytes(ckpt.read_bytes())
    res = retrieval(data, "--run", runs, "--out", tmp_path / "out", "--clips", "1")
    assert (
        res.stderr.splitlines()[0]
        == f"backbone picked for you: {only} (the only final.pt under {runs}; --ckpt to choose)"
    )
    assert json.loads((tmp_path / "out" / "retrieval.json").read_text())["checkpoint"] == str(only)
    for name, age_s in (("b-older", 3600), ("a-newer", 60), ("c-oldest", 7200)):  # names do not sort by age
        path = runs / name / "final.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ckpt.read_bytes())
        os.utime(path, ns=(now, now - age_s * 10**9))
    res = retrieval(data, "--run", runs, "--out", tmp_path / "out2", "--clips", "1", ok=False)
    assert res.exit_code == 2 and not (tmp_path / "out2").exists()
    line = error_line(res)
    assert (
        f"3 runs under {runs} could be meant ({runs / 'a-newer' / 'final.pt'}, "
        f"{runs / 'b-older' / 'final.pt'}" in line
    )
    given = retrieval(
        data, "--ckpt", runs / "a-newer" / "final.pt", "--out", tmp_path / "out", "--clips", "1"
    )
    assert "picked for you" not in given.output


def _is_share_of(percent: float, n: int) -> bool:
    """``percent`` is k/n * 100 for an integer 0 <= k <= n (an accuracy over n videos)."""
    k = percent * n / 100
    return 0 <= k <= n and abs(k - round(k)) < 1e-6


def test_linear_and_knn(world, tmp_path):
    data, ckpt = world
    lin = run_iic(
        "eval", "linear", "--data", data, "--ckpt", ckpt, "--out", tmp_path, *FAST, "--weight-decay", "0.01"
    )
    out = json.loads((tmp_path / "linear.json").read_text())
    assert out["counts"] == {"train": 12, "test": 6, "failed_test": 1}
    assert _is_share_of(out["top1"], 6)  # a share of the 6 scored test videos, not of all 7 listed
    assert "logistic regression" in lin.output and "top-1" in lin.output
    knn = run_iic("eval", "linear", "--data", data, "--ckpt", ckpt, "--out", tmp_path, *FAST, "--knn", "3")
    assert "3-NN" in knn.output and "read from cache" in knn.output  # same pool features as the probe


def _probe_accuracy(xtr, ytr, xte, yte, n_classes: int) -> tuple[float, float]:
    """Train / test accuracy of `logistic_regression` as `evaluate_linear` uses it (its default penalty and
    steps, on features standardised with the train statistics)."""
    cfg = LinearConfig()
    xtr, xte = torch.from_numpy(xtr), torch.from_numpy(xte)
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    clf = logistic_regression(
        (xtr - mean) / std, torch.from_numpy(ytr), n_classes, cfg.weight_decay, cfg.steps
    )
    with torch.no_grad():
        acc = [
            float((clf((x - mean) / std).argmax(1).numpy() == y).mean()) for x, y in ((xtr, ytr), (xte, yte))
        ]
    return acc[0], acc[1]


def test_logistic_probe_separates_separable_classes_and_is_at_chance_on_random_labels():
    rng = np.random.default_rng(0)
    n_classes, dim = 4, 16
    w, scale, offset = rng.normal(size=(dim, n_classes)), rng.uniform(0.5, 3.0, dim), rng.normal(size=dim)

    def separable(n: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels = argmax of one fixed affine map, keeping only points with a clear margin: linearly
        separable (features of unequal scales and off-centre, as backbone features are)."""
        x = rng.normal(size=(20 * n, dim)) * scale + offset
        scores = (x - offset) @ w
        top2 = np.sort(scores, axis=1)[:, -2:]
        keep = (top2[:, 1] - top2[:, 0]) > 4.0  # scores have sd ~6: a margin that held-out points keep too
        return x[keep][:n], scores[keep][:n].argmax(1)

    xtr, ytr = separable(200)
    xte, yte = separable(400)
    assert len(set(ytr)) == n_classes and len(yte) == 400
    assert _probe_accuracy(xtr, ytr, xte, yte, n_classes) == (1.0, 1.0)

    # random labels: nothing to learn, held-out accuracy at chance (1/4; 3000 test points: sd 0.008)
    xtr, xte = rng.normal(size=(300, dim)), rng.normal(size=(3000, dim))
    ytr, yte = rng.integers(0, n_classes, 300), rng.integers(0, n_classes, 3000)
    train_acc, test_acc = _probe_accuracy(xtr, ytr, xte, yte, n_classes)
    assert abs(test_acc - 1 / n_classes) < 0.04, test_acc
    assert train_acc > test_acc + 0.05  # it did fit the training labels: the chance level is not a dead probe


def test_knn_vote_by_hand():
    train = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05], [0.0, 1.0]]), 3, 2).tolist() == [0, 1]
    # a 1-1 tie between classes goes to the more similar neighbour
    assert knn_predict(train[:3], labels[:3], torch.tensor([[0.3, 1.0]]), 2, 2).tolist() == [1]


def test_recognition_one_epoch_and_resume(world, tmp_path):
    data, ckpt = world
    args = [
        "eval",
        "recognition",
        "--data",
        data,
        "--ckpt",
        ckpt,
        "--out",
        tmp_path,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--clips",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--val-fraction",
        "0.2",
        "--seed",
        "1",
    ]
    first = run_iic(*args, "--epochs", "1")
    assert "top-1" in first.output and "top-5" in first.output and "(10 train, 2 val)" in first.output
    assert (tmp_path / "last.pt").exists() and (tmp_path / "final.pt").exists()
    assert load(tmp_path / "last.pt")["epoch"] == 1
    again = run_iic(*args, "--epochs", "1", ok=False)
    assert "--resume" in error_line(again)
    run_iic(*args, "--epochs", "2", "--resume")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_loss" in r for r in rows)
    result = json.loads((tmp_path / "recognition.json").read_text())
    assert result["counts"]["test"] == 6 and result["top1"] <= result["top5"]
    assert _is_share_of(result["top1"], 6) and _is_share_of(result["top5"], 6)
    assert (tmp_path / "curves.png").exists()


def test_recognition_from_scratch_rgb(world, tmp_path):
    data, _ = world
    res = run_iic(
        "eval",
        "recognition",
        "--data",
        data,
        "--random-init",
        "--model",
        "r3d-tiny",
        "--frames",
        "8",
        "--crop",
        "32",
        "--modality",
        "res",
        "--out",
        tmp_path,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--clips",
        "1",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--val-fraction",
        "0",
    )
    assert "random-init r3d-tiny" in res.output and "0 val" in res.output


def test_one_line_errors(world, tmp_path):
    data, ckpt = world
    empty = tmp_path / "no-runs"
    empty.mkdir()
    assert "no checkpoint found" in error_line(retrieval(data, "--run", empty, ok=False))
    state = load(ckpt)
    state["n_data"] = 9537
    other = tmp_path / "other.pt"
    save_atomic(state, other)
    assert "another dataset" in error_line(retrieval(data, "--ckpt", other, "--out", tmp_path, ok=False))
    assert "another dataset" in error_line(
        run_iic("eval", "linear", "--data", data, "--ckpt", other, ok=False)
    )
    assert "flow" in error_line(
        retrieval(data, "--ckpt", ckpt, "--modality", "flow-u", "--out", tmp_path, ok=False)
    )
    assert "exclude" in error_line(retrieval(data, "--ckpt", ckpt, "--random-init", ok=False))
    assert "--merge" in error_line(retrieval(data, "--ckpt", ckpt, "--modality", "rgb", "--merge", ok=False))
    assert "checkpoint not found" in error_line(retrieval(data, "--ckpt", tmp_path / "nope.pt", ok=False))
    assert "no processed dataset" in error_line(retrieval(tmp_path, "--ckpt", ckpt, ok=False))
    assert "differs" in error_line(retrieval(data, "--ckpt", ckpt, "--model", "r3d-10", ok=False))


# ----------------------------------------------------------------------------------------------------------
# the learning signal (slow: a ~2-3 min seeded CPU training run)


def test_each_method_is_scored_with_its_own_protocol(world, tmp_path):
    """Without --feature/--center an IIC checkpoint is scored with IIC's protocol (conv5, not centred), a
    DualVar one with DualVar's (pool, centred); explicit flags win."""
    data, ck = world
    default = retrieval(data, "--ckpt", ck, "--out", tmp_path / "a")
    got = json.loads((tmp_path / "a" / "retrieval.json").read_text())
    assert (got["config"]["feature"], got["config"]["center"]) == ("conv5", False)
    assert "conv5" in default.output and "centred" not in default.output
    retrieval(data, "--ckpt", ck, "--feature", "pool", "--center", "--out", tmp_path / "b")
    got = json.loads((tmp_path / "b" / "retrieval.json").read_text())
    assert (got["config"]["feature"], got["config"]["center"], got["feature_dim"]) == ("pool", True, 64)
    dv = RetrievalConfig(data=data).with_protocol("dualvar")
    assert (dv.feature, dv.center, dv.modality) == ("pool", True, "rgb")
    assert RetrievalConfig(data=data, center=False).with_protocol("dualvar").center is False
    assert got["config"]["modality"] == "res"  # IIC's input view (docs/method.md: repeat+res) unless told
    assert RetrievalConfig(data=data, modality="rgb").with_protocol("iic").modality == "rgb"
    # the linear probe follows the same protocol (it had rgb / pool of its own before)
    run_iic("eval", "linear", "--data", data, "--ckpt", ck, *FAST, "--out", tmp_path / "l")
    lin = json.loads((tmp_path / "l" / "linear.json").read_text())["config"]
    assert (lin["modality"], lin["feature"]) == ("res", "conv5")


def test_a_fine_tuning_that_ends_at_chance_says_why():
    """The paper's recognition recipe (lr 1e-3, plateau decay) does not move a 30-epoch run on a small set:
    the result then says so and what to change, instead of a bare top-1 near chance."""
    from iic.model.run.finetune import FinetuneConfig, chance_warnings

    cfg = FinetuneConfig(epochs=30)
    rows = [{"epoch": 29, "loss": 2.01, "lr": 1e-6}, {"epoch": 30, "loss": 2.022, "lr": 1e-7}]
    [warning] = chance_warnings(rows, 8, 390, cfg)
    for words in (
        "ended near chance",
        "training loss 2.022 against ln(8) = 2.079",
        "after 390 steps",
        "rate of 1e-07 (from --lr 0.001, cut on plateaus of 2 epochs)",
        "--schedule cosine with a higher --lr (e.g. 0.01)",
    ):
        assert words in warning, warning
    assert chance_warnings([{"epoch": 30, "loss": 1.5, "lr": 1e-3}], 8, 390, cfg) == []  # it learnt
    assert chance_warnings([], 8, 0, cfg) == []


def test_a_damaged_feature_cache_is_said_and_recomputed(world, tmp_path, caplog):
    """A truncated cache file is one warning naming it; the retrieval recomputes its features (same numbers)
    and rewrites the file."""
    data, trained = world
    ckpt = tmp_path / "run" / "final.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(trained.read_bytes())
    first = json.loads(retrieval(data, "--ckpt", ckpt, "--out", tmp_path / "a", "--json").stdout)
    cache = sorted((ckpt.parent / "eval" / "features").glob("features-test-*.npz"))
    assert len(cache) == 1
    cache[0].write_bytes(cache[0].read_bytes()[:200])  # a disk that filled up, a copy cut short
    with caplog.at_level(logging.WARNING, logger="iic.model.evaluation.features"):
        again = retrieval(data, "--ckpt", ckpt, "--out", tmp_path / "b", "--json")
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert (
        len(warnings) == 1 and str(cache[0]) in warnings[0] and "computing its features again" in warnings[0]
    )
    second = json.loads(again.stdout)
    assert second["topk"] == first["topk"] and not second["cached"]
    assert json.loads(retrieval(data, "--ckpt", ckpt, "--out", tmp_path / "c", "--json").stdout)["cached"]


def test_center_and_no_center_override_the_protocol(world, tmp_path):
    """IIC's protocol does not centre; --center does, and --no-center undoes a centring protocol's (the folder
    names the choice)."""
    data, ckpt = world
    base = [
        "--random-init",
        "--model",
        "r3d-tiny",
        "--frames",
        "8",
        "--crop",
        "32",
        "--feature",
        "pool",
        "--json",
    ]
    for flag, centred in (("--center", True), ("--no-center", False)):
        r = retrieval(data, *base, flag, "--run", tmp_path / "runs")
        result = json.loads(r.stdout)
        assert result["center"] is centred and result["config"]["center"] is centred
        assert (
            Path(result["out"]).name
            == "retrieval-ucf101-s1-res-pool" + ("-centred" if centred else "") + "-2clips"
        )


def test_every_report_names_the_recipe_and_its_feature_normalisation(world, tmp_path):
    """A run trained with --no-normalize (the authors' raw features) says so in its retrieval report, as the
    paper presets' runs say they normalise."""
    data, ckpt = world
    run_iic(
        "train",
        "--preset",
        "tiny",
        "--data",
        data,
        "--out",
        tmp_path / "raw",
        "--crop",
        "32",
        "--frames",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--monitor-every",
        "0",
        "--no-normalize",
    )
    for path, normalised in ((ckpt, True), (tmp_path / "raw" / "final.pt", False)):
        result = json.loads(
            retrieval(data, "--ckpt", path, "--json", "--out", tmp_path / "e" / str(normalised)).stdout
        )
        recipe = result["trained_with"]
        assert (
            recipe["method"] == "iic"
            and recipe["model"] == "r3d-tiny"
            and recipe["iic"]["normalize"] is normalised
        )


def test_a_flow_run_is_scored_on_the_view_it_trained_with_by_default(world):
    """An IIC run whose second view was a flow component is retrieved, probed and fine-tuned on that view
    unless --modality says otherwise; residual and DualVar runs keep their protocols' inputs."""
    from iic.model.evaluation.protocol import default_input

    data, _ = world
    assert RetrievalConfig(data=data).with_protocol("iic", "flow-u").modality == "flow-u"
    assert RetrievalConfig(data=data, modality="rgb").with_protocol("iic", "flow-v").modality == "rgb"
    assert [default_input("iic", v) for v in ("res", "flow-u", "flow-v", "rgb")] == [
        "res",
        "flow-u",
        "flow-v",
        "res",
    ]
    assert default_input("dualvar", "rgb") == "rgb" and default_input("random-init") == "res"
