"""Tests: `python -m pytest -q` (about 6 min on an idle 2-core CPU; `FAST=1` skips the three slowest). CPU, tiny
fake data (`write_fake_cifar`), plus a check that every committed result under results/ is reused as it is.

Sections, each guarding one promise: data (the CIFAR-10 files read as they are) · models, losses, optimizers
(architectures, parameter counts, recipes) · training runs (the one loop: resume bit-exactly, divergence,
budgets) · precision (bf16 / fp32, channels_last) · Task 2 (the BN analysis: probe, verdicts, figures) ·
landscapes (surfaces, Hessian, paths) · run_all.sh (plan, job runner, report) · the GPU check (CUDA-only tests
skip without a GPU) · nothing lost or mixed up (kills, bad input, refusals).
"""
import itertools
import json
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import common

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(ROOT, "task1"), os.path.join(ROOT, "task2"), os.path.join(ROOT, "bench")]
import bn_analysis  # noqa: E402
import cuda_checks  # noqa: E402
import landscape  # noqa: E402
import report  # noqa: E402
import reproduce  # noqa: E402
import visualize  # noqa: E402

TRAIN = os.path.join(ROOT, "task1", "train.py")
TIMING_KEYS = {"img_per_s", "epoch_seconds", "elapsed"}
# bf16 + channels_last: the path a GPU runs, taken here on the CPU (emulated where the CPU lacks native bf16)
TINY = ["--arch", "light", "--width", "0.125", "--batch-size", "32", "--device", "cpu", "--no-download",
        "--precision", "bf16"]
BF16_SURFACE_RTOL = 0.02  # a bf16 surface vs fp32: bf16 keeps 8 bits of mantissa (2**-8 = 0.4%)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu_check.sh runs them there)")
SLOW = pytest.mark.skipif(os.environ.get("FAST") == "1", reason="FAST=1 skips the slowest tests; CI runs them")
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                    [255, 255, 255], [0, 0, 0], [128, 64, 0], [0, 128, 64]], dtype=np.float64)


# ---------------------------------------------------------------------------------------- helpers

def write_fake_cifar(root, n_train=300, n_test=100, easy=False, seed=0):
    """A cifar-10-batches-py folder in the real pickle format (bytes keys, uint8 [N, 3072]).
    easy=True: the class is the image's dominant colour, plus noise."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, common.CIFAR10_FOLDER)
    os.makedirs(folder, exist_ok=True)

    def images(n):
        labels = rng.integers(0, 10, n)
        if easy:
            pixels = 0.7 * COLOURS[labels][:, :, None] + rng.uniform(0, 0.3 * 255, (n, 3, 1024))
        else:
            pixels = rng.uniform(0, 255, (n, 3, 1024))
        return pixels.reshape(n, 3072).astype(np.uint8), labels.tolist()

    per_batch = n_train // 5
    for i, name in enumerate(common.CIFAR10_TRAIN_FILES + [common.CIFAR10_TEST_FILE]):
        data, labels = images(per_batch if i < 5 else n_test)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * len(labels)}, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return str(root)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"))


def parse(argv):
    return common.parse_config("task1/train.py", argv)


def run_cli(args, **kwargs):
    return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, cwd=ROOT, **kwargs)


def metrics(out):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in common.read_metrics(out)]


def read_json(path):
    return common.load_json(str(path))


# ---------------------------------------------------------------------------------------- data

def test_loader_reads_real_format_and_splits(fake_data):
    data = common.load_cifar10(fake_data, download=False)
    assert data["train_x"].shape == (300, 3, 32, 32) and data["train_x"].dtype == torch.uint8
    assert data["test_x"].shape == (100, 3, 32, 32) and data["train_y"].dtype == torch.int64
    assert data["classes"] == [f"class{i}" for i in range(10)]
    (tx, ty), (vx, vy) = common.split_train_val(data["train_x"], data["train_y"], n_val=5000)
    assert len(vy) == 30 and len(ty) == 270  # capped at a tenth
    (tx2, _), (vx2, _) = common.split_train_val(data["train_x"], data["train_y"], n_val=5000, subset=100)
    assert len(tx2) == 100 and torch.equal(tx2, tx[:100]) and torch.equal(vx2, vx)  # subset: first N, same val
    # train and validation images are disjoint rows of the original
    flat = lambda x: {bytes(r.numpy()) for r in x.reshape(len(x), -1)}
    assert not flat(tx) & flat(vx)


def test_augment_is_a_shifted_or_flipped_crop():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = common.augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    n_flipped = 0
    for img, res in zip(padded, out):
        crops = [(img[:, dy:dy + 32, dx:dx + 32], flip) for dy in range(9) for dx in range(9) for flip in (0, 1)]
        matches = [flip for crop, flip in crops if torch.equal(crop.flip(2) if flip else crop, res)]
        assert matches, "augmented image is not a crop of the padded image"
        n_flipped += matches[0]
    assert 0 < n_flipped < 16


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable CIFAR-10 pickle"),
    ("delete", "file is missing"),
    ("wrong_keys", "missing key(s) ['data', 'labels']"),
    ("wrong_shape", "'data' should be uint8 [N, 3072]"),
])
def test_bad_batch_file_gives_one_clear_line(tmp_path, damage, message):
    root = write_fake_cifar(tmp_path, n_train=50, n_test=10)
    path = os.path.join(root, common.CIFAR10_FOLDER, "data_batch_3")
    if damage == "truncate":
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[: len(blob) // 2])
    elif damage == "delete":
        os.remove(path)
    elif damage == "wrong_keys":
        with open(path, "wb") as f:
            pickle.dump({b"pixels": 1}, f)
    else:
        with open(path, "wb") as f:
            pickle.dump({b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}, f)
    with pytest.raises(common.DataError) as err:
        common.load_cifar10(root, download=False)
    assert path in str(err.value) and message in str(err.value)
    if damage == "truncate":  # the script itself: one line on stderr, no traceback, non-zero exit
        proc = run_cli([*TINY, "--data-dir", root, "--epochs", "1", "--out", str(tmp_path / "run")])
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and path in proc.stderr


def test_missing_folder_is_downloaded_and_checked(tmp_path, monkeypatch):
    """torchvision's real download path with only the network replaced: an archive whose MD5 is not CIFAR-10's
    is refused with one line; with that archive's own MD5 in its place it is unpacked and read."""
    import hashlib
    import tarfile
    import torchvision.datasets.utils as tv_utils
    write_fake_cifar(tmp_path / "src", n_train=50, n_test=10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / common.CIFAR10_FOLDER, arcname=common.CIFAR10_FOLDER)
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(tv_utils, "_urlretrieve", lambda url, path, *a, **k: shutil.copy(archive, path))
    with pytest.raises(common.DataError, match="download failed"):
        common.load_cifar10(str(tmp_path / "bad"), download=True)  # the archive is not the real CIFAR-10
    monkeypatch.setattr(common, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = common.load_cifar10(str(tmp_path / "good"), download=True)
    assert data["train_x"].shape == (50, 3, 32, 32) and not (tmp_path / "good" / archive.name).exists()


def test_missing_folder_without_download(tmp_path):
    proc = run_cli([*TINY, "--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cifar-10-batches-py: folder not found" in proc.stderr and "--no-download" in proc.stderr


# ---------------------------------------------------------------------------------------- models, losses, optimizers

def resvgg16_param_count(channels, hidden, residual=True):
    """Closed form, independent of the model code: conv weights + BN (2 per channel) + linear layers."""
    conv_bn = lambda c_in, c_out, k: c_in * c_out * k * k + 2 * c_out
    total = conv_bn(3, channels[0], 3)
    c_in = channels[0]
    for c_out, n_blocks in zip(channels, [2, 2, 3, 3, 3]):
        for _ in range(n_blocks):
            if residual:
                total += conv_bn(c_in, c_out, 3) + conv_bn(c_out, c_out, 3)
                total += conv_bn(c_in, c_out, 1) if c_in != c_out else 0
            else:
                total += conv_bn(c_in, c_out, 3)
            c_in = c_out
    for h in hidden + [10]:
        total += c_in * h + h
        c_in = h
    return total


@pytest.mark.parametrize("arch, residual, expected", [
    ("standard", True, 50_155_594), ("light", True, 8_606_250),
    ("standard", False, 33_679_434), ("light", False, 4_484_650)])
def test_param_counts(arch, residual, expected):
    model = common.ResVGG16(arch, residual=residual)
    channels, hidden = common.RESVGG16_ARCHS[arch]
    assert common.count_params(model) == resvgg16_param_count(channels, hidden, residual) == expected
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_and_nll_agree_bit_for_bit(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(64, 10, requires_grad=True)
    y = torch.randint(0, 10, (64,))
    grads = {}
    for name in ("ce", "nll"):
        loss = common.loss_fn(name, smoothing)(logits, y)
        grads[name] = (loss, torch.autograd.grad(loss, logits)[0])
    assert torch.equal(grads["ce"][0], grads["nll"][0]) and torch.equal(grads["ce"][1], grads["nll"][1])
    p = logits.detach().softmax(1)  # and smoothing is the textbook one: (1 - ε) NLL + ε · mean over classes
    by_hand = ((1 - smoothing) * -p[range(64), y].log() + smoothing * -p.log().mean(1)).mean()
    assert grads["nll"][0].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_nll_twin_trains_bit_identical_weights(fake_data, tmp_path):
    """The grid's NLL rows rest on this: a ce run and its nll twin end with the same weights_sha256."""
    digests = {}
    for loss in ("ce", "nll", "mse"):
        result = common.train(parse([*TINY, "--recipe", "fast", "--loss", loss, "--epochs", "1", "--subset", "64",
                                     "--data-dir", fake_data, "--out", str(tmp_path / loss)]))
        digests[loss] = result["weights_sha256"]
    assert digests["ce"] == digests["nll"] != digests["mse"] and len(digests["ce"]) == 64
    model, _ = common.load_checkpoint(os.path.join(tmp_path, "nll", "last.pt"))
    assert common.weights_digest(model) == digests["nll"]
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert common.weights_digest(model) != digests["nll"]


def test_label_smoothing_is_refused_for_mse():
    with pytest.raises(common.UsageError, match="--label-smoothing applies to --loss ce and nll only"):
        parse(["--loss", "mse", "--label-smoothing", "0.1", "--device", "cpu"])


def test_mse_loss_is_softmax_vs_one_hot():
    logits = torch.tensor([[0.0, 0.0], [100.0, -100.0]])
    loss = common.loss_fn("mse")(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((0.25 + 0.25 + 1 + 1) / 4)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_scratch_equals_torch_sgd(nesterov):
    weights = []
    for cls in (torch.optim.SGD, common.ScratchSGD):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 3))
        start = [p.detach().clone() for p in model.parameters()]
        opt = cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(weights[1], start) if a.dim() > 1)  # the steps moved


def schedule_lrs(kind, epochs, steps_per_epoch):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = common.lr_schedule(opt, kind, epochs, steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules():
    per_batch = schedule_lrs("cosine_step", 2, 5)
    assert per_batch[0] == pytest.approx(0.1) and per_batch[5] == pytest.approx(0.05) and per_batch[9] < per_batch[8]
    per_epoch = schedule_lrs("cosine_epoch", 4, 3)  # CosineAnnealingLR(T_max=4) stepped once per epoch
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4) for _ in range(3)]
    assert per_epoch == pytest.approx(expected)
    assert schedule_lrs("none", 2, 3) == [0.1] * 6


def vgg16_param_count(channels, hidden):
    """Closed form: 13 conv3x3 with bias, no BN, then the linear layers on the 1x1 map."""
    total, c_in = 0, 3
    for c_out, n_convs in zip(channels, [2, 2, 3, 3, 3]):
        for _ in range(n_convs):
            total += c_in * c_out * 9 + c_out
            c_in = c_out
    for h in hidden + [10]:
        total += c_in * h + h
        c_in = h
    return total


@pytest.mark.parametrize("arch, expected", [("standard", 33_638_218), ("light", 4_473_258)])
def test_the_report_authors_plain_vgg16(arch, expected):
    model = common.build_model(common.complete_config(dict(model="vgg16", arch=arch, act="leaky_relu", width=1.0,
                                                       dropout=0.5, num_classes=10, opt="sgd", recipe="report")))
    assert common.count_params(model) == vgg16_param_count(*common.RESVGG16_ARCHS[arch]) == expected
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) and m.bias is not None for m in model.modules()) == 13
    assert all(m.negative_slope == 0.1 for m in model.modules() if isinstance(m, torch.nn.LeakyReLU))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(abs(m.weight.std().item() - 0.01) < 0.002 and not m.bias.any() for m in linears)  # N(0, 0.01)
    conv = model.features[0]  # kaiming_normal fan_out: std = sqrt(2 / (c_out · 9))
    assert conv.weight.std().item() == pytest.approx((2 / (conv.out_channels * 9)) ** 0.5, rel=0.1)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_report_classifier_of_the_task2_bn_models():
    counts = {name: common.count_params(common.build_model(common.complete_config(dict(
        model=name, act="relu", width=1.0, dropout=0.5, num_classes=10, opt="sgd", recipe="report"))))
        for name in ("vgg_a_bn", "vgg_a_res_bn")}
    assert counts == {"vgg_a_bn": 9_758_474, "vgg_a_res_bn": 20_736_522}


def test_recipe_fast_resolves_to_its_published_settings(fake_data, tmp_path):
    cfg = parse(["--arch", "light", "--act", "leaky_relu", "--opt", "sgd", "--recipe", "fast", "--device", "cpu"])
    assert {k: cfg[k] for k in ("epochs", "batch_size", "lr", "momentum", "nesterov", "wd", "decay_bn_bias",
                                "label_smoothing", "dropout", "schedule", "augment")} == dict(
        epochs=30, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, wd=5e-4, decay_bn_bias=False,
        label_smoothing=0.1, dropout=0.0, schedule="onecycle", augment=True)
    # batch 128 won the search for SGD; Adam keeps the batch its lr was chosen at
    assert parse(["--recipe", "fast", "--opt", "adam", "--device", "cpu"])["batch_size"] == 256
    assert parse(["--recipe", "fast", "--lr", "0.05", "--loss", "nll", "--device", "cpu"])["lr"] == 0.05  # flags win
    assert parse(["--recipe", "fast", "--loss", "nll", "--device", "cpu"])["label_smoothing"] == 0.1  # ce's twin
    assert parse(["--recipe", "fast", "--loss", "mse", "--device", "cpu"])["label_smoothing"] == 0.0
    lrs = schedule_lrs("onecycle", 24, 10)  # up over the first 5/24 of the steps (50 of 240), then down to 0
    assert lrs[49] == pytest.approx(0.1) and lrs[0] == pytest.approx(0.1 / 50) and lrs[-1] < lrs[200] < lrs[60]
    run = common.Run(parse([*TINY, "--recipe", "fast", "--data-dir", fake_data, "--out", str(tmp_path)]),
                     torch.device("cpu"))
    groups = run.optimizer.param_groups  # no weight decay on biases and BN (the 1-d tensors)
    assert groups[0]["weight_decay"] == 5e-4 and all(p.dim() > 1 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0 and all(p.dim() == 1 for p in groups[1]["params"]) and groups[0]["nesterov"]


def test_recipe_report_resolves_to_the_authors_settings():
    t1 = lambda *a: parse([*TINY, *a])  # noqa: E731
    sgd, adam = t1("--model", "vgg16", "--opt", "sgd", "--recipe", "report"), t1("--opt", "adam", "--recipe", "report")
    assert {k: sgd[k] for k in ("epochs", "batch_size", "wd", "lr", "momentum", "schedule", "normalization", "augment",
                                "init", "leaky_slope")} == dict(
        epochs=100, batch_size=32, wd=1e-4, lr=0.01, momentum=0.9, schedule="cosine_epoch", normalization="report",
        augment=True, init="kaiming", leaky_slope=0.1)  # batch 32: TINY's flag wins over the recipe
    assert (adam["lr"], adam["wd"], adam["schedule"], adam["init"]) == (1e-4, 0.0, "none", "xavier")
    ours = t1("--opt", "sgd")
    assert (ours["epochs"], ours["wd"], ours["schedule"], ours["init"], ours["normalization"]) == (
        60, 5e-4, "cosine_step", "default", "cifar10")
    t2 = parse(["--model", "vgg_a_bn", "--opt", "sgd", "--recipe", "report"])
    assert {k: t2[k] for k in ("epochs", "batch_size", "wd", "dropout", "schedule", "normalization", "augment", "init",
                               "classifier_bn")} == dict(
        epochs=50, batch_size=64, wd=0.0, dropout=0.5, schedule="none", normalization="half", augment=False,
        init="kaiming_all", classifier_bn=True)
    plain = parse(["--model", "vgg_a", "--recipe", "report"])
    assert (plain["dropout"], plain["classifier_bn"]) == (0.0, False)  # the author's VGG_A: no dropout, no BN1d
    assert common.NORMALIZATIONS["report"][1] == (0.2023, 0.1994, 0.2010)


def test_configs_saved_before_the_recipe_rebuild_the_same_model():
    """An old config.json has no recipe keys: the model it rebuilds is the one it trained (VGG-A Xavier, ResVGG16
    PyTorch default), with CIFAR-10 standardization inside."""
    old = dict(model="vgg_a_bn", act="relu", width=0.25, dropout=0.0, num_classes=10, opt="adam", residual=True)
    torch.manual_seed(0)
    model = common.build_model(old)
    torch.manual_seed(0)
    reference = common.VGGA(bn=True, width=0.25)
    for m in reference.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_normal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (common.CIFAR10_MEAN, common.CIFAR10_STD))
    model.eval()
    assert torch.equal(model(x), model.classifier(model.features((x - mean) / std)))


# ---------------------------------------------------------------------------------------- training runs

RESULT_KEYS = {"status", "best_val_acc", "best_epoch", "test_acc_at_best_val", "final_test_acc", "params",
               "train_seconds", "device", "torch_version"}


def test_cli_run_writes_every_file_and_checkpoint_rebuilds_model(fake_data, tmp_path):
    out = str(tmp_path / "run")
    proc = run_cli([*TINY, "--arch", "standard", "--act", "relu", "--loss", "ce", "--opt", "sgd",
                    "--data-dir", fake_data, "--epochs", "2", "--out", out])
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "metrics.jsonl", "result.json", "best.pt", "last.pt", "curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert "epoch   2/2" in proc.stdout and "ETA" in proc.stdout and "img/s" in proc.stdout
    result = read_json(os.path.join(out, "result.json"))
    assert RESULT_KEYS <= set(result) and result["status"] == "completed" and result["device"] == "cpu"
    assert read_json(os.path.join(out, "config.json"))["precision"] == "bf16" == result["config"]["precision"]
    assert result["config"]["memory_format"] == "channels_last"
    assert result["config"]["lr"] == 0.01 and result["config"]["wd"] == 5e-4  # the report's SGD defaults
    assert len(metrics(out)) == 2 and result["best_epoch"] in (1, 2)
    assert result["best_val_acc"] == max(m["val_acc"] for m in metrics(out))
    # best.pt alone rebuilds its model and reproduces the reported test numbers
    model, ckpt = common.load_checkpoint(os.path.join(out, "best.pt"))
    assert ckpt["epoch"] == result["best_epoch"] and common.count_params(model) == result["params"]
    data = common.load_cifar10(fake_data, download=False)
    numerics = common.saved_numerics(ckpt["config"], torch.device("cpu"))
    loss, acc = common.evaluate(numerics.place(model, "cpu"), data["test_x"], data["test_y"], common.loss_fn("ce"),
                                torch.device("cpu"), numerics=numerics)
    assert acc == result["test_acc_at_best_val"] and loss == pytest.approx(result["test_loss_at_best_val"], abs=1e-9)
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags", [
    ["--act", "leaky_relu", "--loss", "nll", "--opt", "adam"],
    ["--act", "tanh", "--loss", "mse", "--opt", "adamw"],
    ["--act", "gelu", "--loss", "ce", "--label-smoothing", "0.1", "--opt", "sgd_scratch", "--no-residual"],
])
def test_each_activation_loss_optimizer_trains(fake_data, tmp_path, flags):
    cfg = parse([*TINY, *flags, "--data-dir", fake_data, "--epochs", "1", "--out", str(tmp_path)])
    result = common.train(cfg)
    assert result["status"] == "completed" and result["epochs_run"] == 1
    assert 0 <= result["final_test_acc"] <= 1 and 0 <= result["test_acc_at_best_val"] <= 1
    assert result["params"] == common.count_params(common.build_model(cfg))
    model, ckpt = common.load_checkpoint(os.path.join(tmp_path, "last.pt"))
    # each flag took effect: the activation modules, the blocks, the loss function, the optimizer's state
    acts = {"leaky_relu": torch.nn.LeakyReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}
    kinds = {type(m) for m in model.modules()}
    assert acts[cfg["act"]] in kinds and not kinds & ({torch.nn.ReLU, *acts.values()} - {acts[cfg["act"]]})
    assert (common.ResidualBlock in kinds) == ("--no-residual" not in flags)
    logits, p = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[2.0, 0.0, -1.0]]).softmax(1)[0]
    by_hand = {"nll": -p[0].log(), "mse": ((p - torch.tensor([1.0, 0, 0])) ** 2).mean(),
               "ce": 0.9 * -p[0].log() + 0.1 * -p.log().mean()}[ckpt["config"]["loss"]]  # ce with smoothing 0.1
    criterion = common.loss_fn(ckpt["config"]["loss"], ckpt["config"]["label_smoothing"])
    assert criterion(logits, torch.tensor([0])).item() == pytest.approx(by_hand.item(), rel=1e-6)
    state, group = ckpt["optimizer"]["state"][0], ckpt["optimizer"]["param_groups"][0]
    assert ("exp_avg" in state) == (cfg["opt"] in ("adam", "adamw")) and ("momentum_buffer" in state) == (
        cfg["opt"] == "sgd_scratch")
    assert bool(group.get("decoupled_weight_decay")) == (cfg["opt"] == "adamw")


def test_training_learns_an_easy_task(tmp_path):
    root = write_fake_cifar(tmp_path / "easy", n_train=2000, n_test=200, easy=True)
    cfg = parse([*TINY, "--width", "0.25", "--dropout", "0", "--opt", "adam", "--lr", "2e-3", "--batch-size", "64",
                 "--data-dir", root, "--epochs", "3", "--out", str(tmp_path / "run")])
    result = common.train(cfg)
    assert result["best_val_acc"] > 0.9 and result["test_acc_at_best_val"] > 0.9


def test_same_seed_same_metrics(fake_data, tmp_path):
    runs = []
    for i in range(2):
        common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--out", str(tmp_path / str(i))]))
        runs.append(metrics(tmp_path / str(i)))
    assert runs[0] == runs[1]
    common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--seed", "1", "--out", str(tmp_path / "s1")]))
    assert metrics(tmp_path / "s1") != runs[0]


def test_existing_run_needs_resume_or_overwrite(fake_data, tmp_path):
    args = [*TINY, "--data-dir", fake_data, "--epochs", "1", "--out", str(tmp_path)]
    proc = run_cli([*args, "--resume"])
    assert proc.returncode != 0 and "last.pt does not exist" in proc.stderr
    common.train(parse(args))
    proc = run_cli(args)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("old_format, ema", [(False, False), (True, False), (False, True)])
def test_resume_mid_epoch_matches_uninterrupted(fake_data, tmp_path, monkeypatch, old_format, ema):
    args = [*TINY, "--data-dir", fake_data, "--epochs", "3", "--opt", "adam", *(["--ema", "0.8"] if ema else [])]
    reference = common.train(parse([*args, "--out", str(tmp_path / "ref")]))
    with monkeypatch.context() as m:  # Ctrl-C during step 4 of epoch 2 (270 images // 32 = 8 steps per epoch)
        m.setattr(common, "make_optimizer", cuda_checks.interrupt_at_step(common.make_optimizer, 12))
        stopped = common.train(parse([*args, "--out", str(tmp_path / "cut")]))
    assert stopped["status"] == "interrupted" and len(metrics(tmp_path / "cut")) == 1
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ckpt["progress"]["global_step"] == 8 + 4 and ckpt["epoch"] == 1  # saved mid-epoch, after the current step
    if old_format:  # as saved before the one step counter: the step within the epoch
        ckpt["progress"]["step"] = ckpt["progress"].pop("global_step") - 8
        torch.save(ckpt, tmp_path / "cut" / "last.pt")
    resumed = common.train(parse([*args, "--out", str(tmp_path / "cut"), "--resume"]))
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "ref")
    for key in ("status", "best_val_acc", "best_epoch", "test_acc_at_best_val", "final_test_acc", "final_test_loss"):
        assert resumed[key] == reference[key], key


def test_sigint_saves_and_resume_finishes_identically(fake_data, tmp_path):
    """The command-line path: a real SIGINT mid-epoch, exit code 130, the resume hint, then --resume. The
    process signals itself after its 12th optimizer step (epoch 2 of 8-step epochs), so the test does not
    depend on how fast the machine is."""
    args = [*TINY, "--epochs", "4"]  # the data folder comes from $CIFAR10_DIR
    reference = common.train(parse([*args, "--data-dir", fake_data, "--out", str(tmp_path / "ref")]))
    out = str(tmp_path / "cut")
    child = ("import sys; sys.path.insert(0, 'bench'); import common, cuda_checks; "
             "common.make_optimizer = cuda_checks.interrupt_at_step(common.make_optimizer, 12); "
             "sys.exit(common.train_main('task1/train.py', sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", child, *args, "--out", out], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "CIFAR10_DIR": fake_data})
    assert proc.returncode == 130, proc.stderr
    assert read_json(os.path.join(out, "result.json"))["status"] == "interrupted"
    assert len(metrics(out)) == 1
    printed = shlex.split(proc.stdout.split("Resume with:\n  python ")[1].splitlines()[0])
    assert printed[-1] == "--resume" and printed[printed.index("--data-dir") + 1] == fake_data  # the data kept
    env = {k: v for k, v in os.environ.items() if k != "CIFAR10_DIR"}  # the printed command alone suffices
    proc = subprocess.run([sys.executable, *printed], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert metrics(out) == metrics(tmp_path / "ref")
    assert read_json(os.path.join(out, "result.json"))["final_test_acc"] == reference["final_test_acc"]


def test_a_second_signal_during_the_final_save_lets_it_finish(fake_data, tmp_path, monkeypatch, capsys):
    """Ctrl-C after step 5, then again while last.pt is being written: once this lost the mid-epoch state and
    left a temp file and .lock (a second SIGTERM killed the process, exit 143)."""
    real_save, out = common.save_checkpoint, tmp_path / "run"

    def save(path, payload):
        if path.endswith("last.pt"):
            os.kill(os.getpid(), signal.SIGINT)
        real_save(path, payload)

    monkeypatch.setattr(common, "make_optimizer", cuda_checks.interrupt_at_step(common.make_optimizer, 5))
    monkeypatch.setattr(common, "save_checkpoint", save)
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--out", str(out)]))
    assert result["status"] == "interrupted" and "saving the run's final state first" in capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["global_step"] == 5
    assert sorted(os.listdir(out)) == ["config.json", "last.pt", "metrics.jsonl", "result.json"]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(fake_data, tmp_path, monkeypatch, capsys):
    def full(payload, path):
        open(path, "wb").close()
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(common.torch, "save", full)
    out = tmp_path / "run"
    assert common.train_main("task1/train.py", [*TINY, "--data-dir", fake_data, "--epochs", "1", "--out",
                                                str(out)]) == 2
    err = capsys.readouterr().err
    assert "best.pt could not be written (is the disk full?)" in err and len(err.strip().splitlines()) == 1
    assert not any(".tmp" in name or name == ".lock" for name in os.listdir(out))


def test_a_metrics_line_cut_short_by_a_kill_is_left_out(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.5}\n{"epoch": 2, "val_a')
    assert common.read_metrics(str(tmp_path)) == [{"epoch": 1, "val_acc": 0.5}]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_a\n{"epoch": 2, "val_acc": 0.5}\n')
    with pytest.raises(common.UsageError, match="metrics.jsonl: line 1 is not JSON"):
        common.read_metrics(str(tmp_path))


def test_exploding_lr_stops_as_diverged(fake_data, tmp_path):
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "20", "--lr", "1e4",
                                 "--out", str(tmp_path)]))
    assert result["status"] == "diverged" and result["epochs_run"] < 20
    assert read_json(os.path.join(tmp_path, "result.json"))["status"] == "diverged"
    assert 1 <= result["divergence"]["global_step"] <= 8 * 20 and "(" in result["divergence"]["first_nonfinite"]


def test_a_diverged_run_names_the_first_non_finite_tensor(fake_data, tmp_path, monkeypatch):
    """A fault planted in the output of the first block of stage 2 at step 5 of epoch 1 (so a replay meets it again) is found there,
    not in the classifier or the loss that it poisons afterwards."""
    fault, build_model, train_step = {"on": False}, common.build_model, common._train_step

    def build(cfg):
        model = build_model(cfg)
        model.features[4].register_forward_hook(lambda module, inputs, out: out * math.inf if fault["on"] else None)
        return model

    def step(run, epoch_step, hook):
        fault["on"] = run.state.epoch == 0 and epoch_step == 4
        return train_step(run, epoch_step, hook)

    monkeypatch.setattr(common, "build_model", build)
    monkeypatch.setattr(common, "_train_step", step)
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--out", str(tmp_path)]))
    assert result["status"] == "diverged"
    assert result["divergence"] == dict(global_step=5, first_nonfinite="output of features.4 (ResidualBlock)")


def test_zero_init_residual_zeroes_the_last_bn_scale_of_every_block():
    model = common.build_model(dict(model="resvgg16", arch="light", width=0.125, zero_init_residual=True))
    blocks = [m for m in model.modules() if isinstance(m, common.ResidualBlock)]
    assert len(blocks) == 13 and all(b.bn2.weight.abs().sum() == 0 and b.bn1.weight.min() == 1 for b in blocks)
    with pytest.raises(common.UsageError, match="vgg_a has no residual blocks"):
        common.build_model(dict(model="vgg_a", width=0.125, zero_init_residual=True))


def test_weight_average_warms_up_then_decays():
    model = nn.Linear(2, 1)
    average = common.WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(average.model.weight, 0.1 * start + 0.9 * (start + 1))
    previous = average.model.weight.detach().clone()
    for _ in range(20):  # updates 1..20 shrink the gap to the weights by their decays; from t = 8 on 0.5
        average.update(model)
    shrink = np.prod([min(0.5, (1 + t) / (10 + t)) for t in range(1, 21)])
    assert torch.allclose(average.model.weight, start + 1 - (start + 1 - previous) * shrink)


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    """A model that tells left from right: on bright-left images it says class 0, mirrored class 1, and
    the mean of both logits class 1 (the labels), so plain accuracy is 0 and flip TTA's 1."""
    class LeftRight(nn.Module):
        def forward(self, x):
            left, right = x[..., :16].mean((1, 2, 3)), x[..., 16:].mean((1, 2, 3))
            return torch.stack([left, (left + right) / 2 + 0.1], 1)

    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    images[..., :16] = 255
    labels, args = torch.ones(6, dtype=torch.int64), (nn.CrossEntropyLoss(), torch.device("cpu"))
    assert common.evaluate(LeftRight(), images, labels, *args)[1] == 0.0
    loss, acc = common.evaluate(LeftRight(), images, labels, *args, tta="flip")
    assert acc == 1.0 and loss == pytest.approx(math.log(1 + math.exp(-0.1)), rel=1e-6)


def test_ema_and_flip_tta_evaluate_what_they_say(fake_data, tmp_path):
    """--ema: validation and best.pt are the averaged weights; --tta flip: reported beside the plain test
    accuracy, equal to the accuracy of the mean logits of each image and its mirror under best.pt."""
    out = tmp_path / "run"
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--ema", "0.9", "--tta", "flip",
                                 "--out", str(out)]))
    model, cfg = common.load_checkpoint(out / "best.pt")
    last = torch.load(out / "last.pt", weights_only=True)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), last["model"].values()))
    numerics = common.saved_numerics(cfg, torch.device("cpu"))
    data = common.load_cifar10(fake_data)
    x, y = numerics.inputs(data["test_x"]), data["test_y"]
    with torch.no_grad(), numerics.autocast(torch.device("cpu")):
        logits = (model.eval()(x).float() + model(x.flip(3)).float()) / 2
    assert result["tta"]["kind"] == "flip"
    assert result["tta"]["test_acc_at_best_val"] == (logits.argmax(1) == y).sum().item() / len(y)
    assert result["test_acc_at_best_val"] == common.evaluate(model, data["test_x"], y, nn.CrossEntropyLoss(),
                                                             torch.device("cpu"), numerics=numerics)[1]


def test_no_test_never_reads_the_test_set(tmp_path, monkeypatch):
    """--no-test (a try of a recipe search): no evaluation sees the 77 test images, the test numbers are
    null and flip TTA is reported on validation only; without the flag the same run evaluates them."""
    data, sizes, evaluate = write_fake_cifar(tmp_path / "cifar", n_test=77), [], common.evaluate

    def recording(model, images, *args, **kwargs):
        sizes.append(len(images))
        return evaluate(model, images, *args, **kwargs)

    monkeypatch.setattr(common, "evaluate", recording)
    argv = [*TINY, "--data-dir", data, "--epochs", "1", "--tta", "flip"]
    result = common.train(parse([*argv, "--no-test", "--out", str(tmp_path / "try")]))
    assert 77 not in sizes and sizes and result["test_images"] == 0
    assert [result[k] for k in ("test_acc_at_best_val", "final_test_acc")] == [None, None]
    assert set(result["tta"]) == {"kind", "val_acc_at_best_val"}
    common.train(parse([*argv, "--out", str(tmp_path / "run")]))
    assert 77 in sizes


def test_a_loss_still_falling_at_chance_is_not_diverged(fake_data, tmp_path):
    """One full-batch step per epoch on 256 images: accuracy stays near chance for many epochs while the loss
    falls slowly; that is progress, not divergence (it used to stop at epoch 6)."""
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--subset", "256", "--batch-size", "100000",
                                 "--dropout", "0", "--opt", "adam", "--lr", "5e-5", "--epochs", "6",
                                 "--diverge-patience", "2", "--out", str(tmp_path)]))
    losses = [m["train_loss"] for m in metrics(tmp_path)]
    assert result["status"] == "completed" and len(losses) == 6 and losses[-1] < losses[0]
    history = [dict(train_loss=2.302 - 0.006 * k, train_acc=0.1) for k in range(6)]  # the reported case
    assert not any(common.is_stuck(h, history[:k], 10) for k, h in enumerate(history))
    assert common.is_stuck(dict(train_loss=2.3, train_acc=0.1), history, 10)  # no new low at chance
    assert not common.is_stuck(dict(train_loss=2.5, train_acc=0.5), history, 10)  # learning, whatever the loss


def test_flat_loss_at_chance_stops_as_diverged(fake_data, tmp_path):
    result = common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "20", "--lr", "0", "--dropout", "0",
                                 "--diverge-patience", "2", "--out", str(tmp_path)]))
    losses = [m["train_loss"] for m in metrics(tmp_path)]
    assert result["status"] == "diverged" and result["epochs_run"] < 8  # lr 0: a new low only by chance
    assert min(losses[-2:]) >= min(losses[:-2]) * (1 - common.STUCK_LOSS_FALL)  # the last 2: no new low


# ---------------------------------------------------------------------------------------- precision

def test_bf16_is_fast_only_where_the_cpu_says_so(tmp_path):
    onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for flags, native in (("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fp asimd bf16", True)):
        (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags : {flags}\n")
        assert common.cpu_has_fast_bf16(str(tmp_path / "cpuinfo")) == (native and onednn), flags
    assert not common.cpu_has_fast_bf16(str(tmp_path / "missing"))  # unreadable: fp32, the safe side


def test_precision_auto_follows_what_the_device_computes_fast(monkeypatch):
    cpu = torch.device("cpu")
    for fast, expected in ((True, ("bf16", "channels_last")), (False, ("fp32", "channels_last"))):
        monkeypatch.setattr(common, "cpu_has_fast_bf16", lambda: fast)
        numerics = common.numerics_for("auto", cpu)
        assert (numerics.precision, numerics.memory_format) == expected
        cfg = parse(["--device", "cpu", "--precision", "auto"])
        assert (cfg["precision"], cfg["memory_format"]) == expected  # config.json holds the resolved values
    # a config from before precision was recorded runs as it was made (fp32 on the CPU), and the job runner
    # does not call it a run of other settings
    old = {k: v for k, v in parse(["--device", "cpu"]).items() if k not in common.NUMERICS_KEYS}
    assert common.saved_numerics(old, cpu).precision == "fp32"
    assert common.config_differences(old, parse(["--device", "cpu", "--precision", "bf16"])) == []
    assert common.config_differences(parse(["--device", "cpu", "--precision", "fp32"]),
                                     parse(["--device", "cpu", "--precision", "bf16"])) == ["precision"]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_takes_the_precision_and_memory_format_it_records(fake_data, tmp_path, precision):
    """Convolutions get channels_last inputs; bf16: they return bf16 while the weights stay fp32."""
    seen = {}

    def look(run, x, y, loss, step):
        if step == 0:
            conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: seen.update(out=o.dtype, weight=m.weight.dtype))
            seen["channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
    cfg = parse([*TINY, "--data-dir", fake_data, "--epochs", "1", "--precision", precision, "--out", str(tmp_path)])
    assert common.train(cfg, step_hook=look)["status"] == "completed"
    bf16 = precision == "bf16"
    assert seen == dict(out=torch.bfloat16 if bf16 else torch.float32, weight=torch.float32, channels_last=True)


def test_bf16_landscape_agrees_with_fp32(checkpoints, fake_data, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert landscape.main(["--ckpt", checkpoints[0], "--x", "-1:1:5", "--n-items", "100", "--data-dir", fake_data,
                               "--no-download", "--device", "cpu", "--precision", precision, "--out", str(out)]) == 0
        info = read_json(out / "surface.json")
        assert info["precision_used"] == precision and info["settings"]["precision"] == precision
        assert info["memory_format"] == "channels_last"
        with np.load(out / "surface.npz") as s:
            losses[precision] = s["loss"]
    relative = np.abs(losses["bf16"] - losses["fp32"]) / np.abs(losses["fp32"])
    print(f"bf16 vs fp32 surface: largest relative difference {relative.max():.2e} (tolerance {BF16_SURFACE_RTOL})")
    assert relative.max() < BF16_SURFACE_RTOL and relative.max() > 0  # > 0: bf16 really ran


@SLOW
def test_compile_trains_on_the_cpu(fake_data, tmp_path):
    """--compile (inductor) on the CPU: same losses as eager within bf16's rounding (VGG-A: a small graph)."""
    args = [*TINY, "--model", "vgg_a", "--data-dir", fake_data, "--epochs", "1"]
    eager = common.train(parse([*args, "--out", str(tmp_path / "eager")]))
    compiled = common.train(parse([*args, "--compile", "--out", str(tmp_path / "compiled")]))
    assert compiled["status"] == "completed"
    a, b = metrics(tmp_path / "eager")[0], metrics(tmp_path / "compiled")[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02) and eager["status"] == "completed"


# ---------------------------------------------------------------------------------------- Task 2

BN_ANALYSIS = os.path.join(ROOT, "task2", "bn_analysis.py")


@pytest.mark.parametrize("model, expected", [("vgg_a", 9_750_922), ("vgg_a_bn", 9_756_426),
                                             ("vgg_a_res_bn", 20_734_474)])
def test_vgg_a_param_counts(model, expected):
    net = common.build_model(dict(model=model, act="relu", width=1.0, dropout=0.0, num_classes=10))
    assert common.count_params(net) == expected
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn == {"vgg_a": 0, "vgg_a_bn": 8, "vgg_a_res_bn": 8 * 2 + 4}[model]  # + 4 shortcut BNs
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_task2_defaults_and_convergence_epoch(fake_data, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "task2", "train.py"), "--model", "vgg_a_bn",
                           "--width", "0.125", "--batch-size", "32", "--device", "cpu", "--no-download",
                           "--data-dir", fake_data, "--epochs", "3", "--out", out],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    config, result = read_json(os.path.join(out, "config.json")), read_json(os.path.join(out, "result.json"))
    assert (config["opt"], config["lr"], config["dropout"]) == ("adam", 1e-3, 0.0)  # Task 2 defaults
    assert result["convergence_epoch"] == common.convergence_epoch(common.read_metrics(out))  # stored, as defined:
    assert common.convergence_epoch([dict(epoch=1, val_acc=0.5), dict(epoch=2, val_acc=0.96),
                                     dict(epoch=3, val_acc=1.0)]) == 2  # 0.96 >= 95 % of 1.0, 0.5 is not
    assert common.convergence_epoch([dict(epoch=1, val_acc=0.94), dict(epoch=2, val_acc=0.5),
                                     dict(epoch=3, val_acc=1.0)]) == 3  # 0.94 < 0.95: the first that reaches it
    assert common.convergence_epoch([dict(epoch=1, val_acc=0.3), dict(epoch=2, val_acc=0.2)]) == 1
    assert common.convergence_epoch([]) is None


@pytest.mark.parametrize("opt, direction", [("sgd", "grad"), ("adam", "update")])
def test_probe_does_not_perturb_training(fake_data, tmp_path, opt, direction):
    args = [*TINY, "--model", "vgg_a_bn", "--dropout", "0.5", "--opt", opt, "--data-dir", fake_data, "--epochs", "1"]
    common.train(parse([*args, "--out", str(tmp_path / "plain")]))
    cfg = parse([*args, "--out", str(tmp_path / "probed")])
    probe = bn_analysis.BNProbe(common.loss_fn("ce"), [1e-3, 1e-2, 1e-1], every=1, device=torch.device("cpu"),
                                direction=direction, lr=cfg["lr"], sharpness_every=3, sharpness_images=16,
                                sharpness_iters=3)
    common.train(cfg, step_hook=probe)
    assert len(probe.probes) == 8 and len(probe.step_losses) == 8 and len(probe.sharpness) == 3
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    probed = torch.load(tmp_path / "probed" / "last.pt", weights_only=True)
    for name, tensor in plain["model"].items():  # weights and BN running statistics
        assert torch.equal(tensor, probed["model"][name]), name
    assert torch.equal(plain["torch_rng"], probed["torch_rng"])
    assert metrics(tmp_path / "plain") == metrics(tmp_path / "probed")


@pytest.mark.parametrize("make", [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
                                  lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda ps: torch.optim.AdamW(ps, lr=1e-2)])
def test_next_update_is_the_optimizers_next_step(make):
    """next_update after a few steps (momentum / moments built up) equals what a real step() then does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer, x = make(model.parameters()), torch.randn(16, 5)
    for k in range(4):
        optimizer.zero_grad()
        (model(x + k) ** 2).mean().backward()
        if k < 3:
            optimizer.step()
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v for k, v in optimizer.state_dict()["state"][0].items()}
    update = bn_analysis.next_update(optimizer)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # weights untouched
    assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(optimizer.state_dict()["state"][0][k]))
               for k, v in state.items())  # optimizer state untouched
    optimizer.step()
    for p, b, u in zip(model.parameters(), before, update):
        assert torch.allclose(p.detach() - b, u, rtol=1e-6, atol=1e-9)
        assert u.abs().max() > 0


def test_probe_scale_and_direction_set_the_step():
    """relative: θ + η·lr·d; absolute: θ + η·d; 'update' with η = 1 (relative) lands on the next training step."""
    a = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    model = Bowl(torch.tensor([1.0, -2.0], dtype=torch.float64), a)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        model(None).backward()
        if _ < 2:
            optimizer.step()
    theta, g = model.theta.detach().clone(), (a @ model.theta).detach()
    probe = bn_analysis.BNProbe(lambda out, y: out, [1.0 * 0.1], every=1, device=torch.device("cpu"),
                                direction="update", lr=0.1)  # relative η = 1: etas = η × lr, as analysis_run makes
    moved = theta + bn_analysis.next_update(optimizer)[0]
    relative = probe.probe(model, optimizer, None, None)  # θ + 0.1 × update / 0.1
    assert relative["losses"][0] == pytest.approx(0.5 * (moved @ a @ moved).item(), rel=1e-6)  # fp32 loss
    assert not torch.allclose(moved, theta - 0.1 * g)  # momentum: the update is not the gradient step
    probe.direction, probe.etas = "grad", [0.25]  # absolute: exactly 0.25 along -g
    along_g = probe.probe(model, optimizer, None, None)
    moved = theta - 0.25 * g
    assert along_g["losses"][0] == pytest.approx(0.5 * (moved @ a @ moved).item(), rel=1e-6)
    assert along_g["step_norm"] == pytest.approx(g.norm().item(), rel=1e-6)  # the probe's loss is cast to fp32


class Quadratic(torch.nn.Module):
    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())


class Bowl(Quadratic):
    """A model whose output is its loss ½θᵀAθ (criterion: the identity)."""
    def __init__(self, theta, a):
        super().__init__(theta)
        self.a = a

    def forward(self, x):
        return 0.5 * self.theta @ self.a @ self.theta


def test_probe_formulas_on_a_quadratic():
    """L = ½θᵀAθ: g = Aθ, ∇L(θ − ηg) = g − ηAg, so ‖Δ∇L‖ = η‖Ag‖ and β = ‖Ag‖/‖g‖ for every η."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    theta = torch.randn(6, generator=gen, dtype=torch.float64)
    model = Quadratic(theta)
    etas = [1e-3, 1e-2, 0.1]
    out = common.probe_along(model, lambda: 0.5 * model.theta @ a @ model.theta, etas)
    g = a @ theta
    assert out["loss"] == pytest.approx(0.5 * (theta @ a @ theta).item(), rel=1e-12)
    assert out["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-12)
    for eta, loss, dist, beta in zip(etas, out["losses"], out["grad_dists"], out["betas"]):
        moved = theta - eta * g
        assert loss == pytest.approx(0.5 * (moved @ a @ moved).item(), rel=1e-12)
        assert dist == pytest.approx(eta * (a @ g).norm().item(), rel=1e-9)
        assert beta == pytest.approx(((a @ g).norm() / g.norm()).item(), rel=1e-9)
    assert torch.equal(model.theta.detach(), theta)  # left as found


def test_interrupted_bn_analysis_resumes_to_the_same_numbers(fake_data, tmp_path, monkeypatch, capsys):
    flags = ["--width", "0.125", "--batch-size", "32", "--device", "cpu", "--no-download", "--data-dir", fake_data,
             "--models", "vgg_a_bn", "vgg_a", "--lrs", "1e-3", "--epochs", "2", "--probe-every", "3",
             "--sharpness-every", "4", "--sharpness-images", "16", "--sharpness-iters", "2", "--sharpness-coords", "both"]
    assert bn_analysis.main([*flags, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        m.setattr(common, "make_optimizer", cuda_checks.interrupt_at_step(common.make_optimizer, 11))
        assert bn_analysis.main([*flags, "--out", str(tmp_path / "cut")]) == 130
    assert (tmp_path / "cut" / "runs" / "vgg_a_bn_lr0.001" / "probe_partial.npz").exists()
    capsys.readouterr()
    assert bn_analysis.main([*flags, "--out", str(tmp_path / "cut")]) == 0
    assert "lr0.001 at step 11" in capsys.readouterr().out  # resumed, not started over
    with np.load(tmp_path / "whole" / "bn_analysis.npz") as a, np.load(tmp_path / "cut" / "bn_analysis.npz") as b:
        assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
        assert len(a["vgg_a_bn/lr0.001/step_loss"]) == 16 and len(a["vgg_a_bn/lr0.001/sharpness_top"]) == 4
        assert len(a["vgg_a_bn/lr0.001/sharpness_filter_top"]) == 4
    summary = (tmp_path / "whole" / "summary.md").read_text()
    assert summary.count("| sharpness is lower in filter-normalized coordinates") == 1
    assert "| top Hessian eigenvalue | top eigenvalue, filter coords | runs |" in summary


def test_filter_coordinate_sharpness_is_recorded_only_where_asked_and_is_scale_free():
    """--sharpness-coords filter: the analysis' Hessian on its fixed batch is D·H·D's (unchanged when the
    filters feeding a BN are scaled by 3, while the raw one shrinks); raw only: no filter field, row or
    column, so older analyses redraw as before."""
    class FakeRun:
        def __init__(self, scale):
            torch.manual_seed(0)
            self.model = common.build_model(dict(model="vgg_a_bn", width=0.125, dropout=0.0)).train()  # as trained
            with torch.no_grad():
                for m in self.model.modules():
                    if isinstance(m, nn.Conv2d):
                        m.weight.mul_(scale)
            self.train_x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
            self.train_y, self.numerics, self.device = torch.arange(8) % 10, common.FP32, torch.device("cpu")

    def probe(coords):
        return bn_analysis.BNProbe(nn.CrossEntropyLoss(), [1.0], 1, torch.device("cpu"), sharpness_images=8,
                                   sharpness_iters=80, sharpness_coords=coords)
    both = [probe("both").hessian(FakeRun(c)) for c in (1.0, 3.0)]
    assert both[1]["filter_top"] == pytest.approx(both[0]["filter_top"], rel=2e-3)
    assert both[1]["top"] < both[0]["top"] / 3  # the classifier's block, not scaled, keeps it above 1/9
    assert set(probe("raw").hessian(FakeRun(1.0))) == set(bn_analysis.SHARPNESS_FIELDS[1:])
    recorder = probe("raw")
    recorder.sharpness = [dict(step=0, **probe("raw").hessian(FakeRun(1.0)))]
    runs = [dict(model=m, lr=0.1, arrays=recorder.arrays()) for m in ("vgg_a", "vgg_a_bn")]
    assert "sharpness_filter_top" not in runs[0]["arrays"]
    assert [key for _, key in bn_analysis.claims_of(runs)] == ["loss_range", "grad_dist", "beta", "sharpness"]


def test_a_bn_analysis_killed_mid_way_leaves_nothing_that_passes_for_finished(fake_data, tmp_path, monkeypatch):
    """Killed after a retrained run's result.json but before its probe.npz, the rerun once reused the old
    probe.npz; killed while drawing, the old summary.md stayed beside the new raw numbers. Now the old probe
    arrays go before the run trains again, and summary.md (written last) before the new raw numbers; a
    truncated bn_analysis.json or .npz is one line on --replot."""
    flags = ["--width", "0.125", "--batch-size", "32", "--device", "cpu", "--no-download", "--data-dir", fake_data,
             "--models", "vgg_a_bn", "vgg_a", "--lrs", "1e-3", "--epochs", "1", "--probe-every", "4",
             "--out", str(tmp_path)]
    assert bn_analysis.main(flags) == 0 and (tmp_path / "summary.md").exists()
    real_save, probe = common.save_npz, tmp_path / "runs" / "vgg_a_bn_lr0.001" / "probe.npz"

    def killed_at_the_probe_file(path, **arrays):
        if path.endswith("probe.npz"):
            raise KeyboardInterrupt  # as a kill -9 would, between result.json and probe.npz
        real_save(path, **arrays)

    with monkeypatch.context() as m:
        m.setattr(common, "save_npz", killed_at_the_probe_file)
        with pytest.raises(KeyboardInterrupt):
            bn_analysis.main([*flags, "--epochs", "2"])
    assert not probe.exists() and (probe.parent / "result.json").exists()
    with monkeypatch.context() as m:
        m.setattr(bn_analysis, "write_bn_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            bn_analysis.main([*flags, "--epochs", "2"])
    assert probe.exists() and not (tmp_path / "summary.md").exists()
    (tmp_path / "bn_analysis.npz").write_bytes(b"PK\x03\x04 cut short")
    assert bn_analysis.main(["--replot", str(tmp_path)]) == 2
    (tmp_path / "bn_analysis.json").write_text('{"runs": [')
    assert bn_analysis.main(["--replot", str(tmp_path)]) == 2


def known_run(model, lr, step_loss, probe_ranges, betas, sharpness):
    """A run dict as load_bn_analysis returns it, 2 steps per epoch, probes at steps 0, 2, 3 (two η each)."""
    pairs = lambda values: np.array([[v / 2, v] for v in values])  # noqa: E731 (the max over η is the value)
    arrays = dict(step_loss=np.array(step_loss, float), steps_per_epoch=np.array(2), probe_step=np.array([0, 2, 3]),
                  probe_losses=np.array([[1.0, 1.0 + r] for r in probe_ranges]), probe_grad_dists=pairs(betas),
                  probe_betas=pairs(betas), sharpness_step=np.array([0, 2, 3]),
                  sharpness_top=np.array(sharpness, float))
    result = dict(status="completed", final_val_acc=0.5, test_acc_at_best_val=0.5, final_test_acc=0.5,
                  convergence_epoch=1)
    return dict(model=model, lr=lr, dir=f"runs/{model}", history=[], result=result, arrays=arrays)


def test_claims_table_reports_whether_effective_beta_only_measures_the_probe_step():
    """The β check: ‖Δ∇L‖/‖∇L‖ at the smallest η (column of min(probe_etas)), median after the first epoch."""
    runs = [known_run("vgg_a", 0.1, [3, 2, 2, 1], [1, 1, 1], [100, 4, 6], [1, 1, 1]),
            known_run("vgg_a_bn", 0.1, [3, 2, 1, 1], [1, 1, 1], [0, 8, 8], [1, 1, 1])]
    for run, norm in zip(runs, (2.0, 8.0)):  # grad_dists at η = 0.5 (column 0): 2, 3 and 4, 4 after epoch 1
        run["arrays"]["probe_grad_norm"] = np.array([1.0, norm, norm])
    text = bn_analysis.claims_table(runs, dict(probe_etas=[0.5, 1.0], probe_scale="relative"))
    assert "smallest step η = 0.5·lr after epoch 1 — lr 0.1: vgg_a 1.25, vgg_a_bn 0.5." in text
    beta = next(line for line in text.splitlines() if line.startswith("| effective β"))
    assert beta.endswith("| 1.25 / 0.5 |") and "at η_min, baseline / compared |" in text  # the column too
    assert "Effective β's probe check" not in bn_analysis.claims_table(runs, dict(opt="sgd"))  # no etas: no line


def test_small_steps_extend_the_papers_probe_down_to_a_hundredth_of_the_lr():
    """--small-steps (beyond the paper): η/lr from 0.01 up to the paper's 4, sorted, each once; without it the
    paper's seven steps."""
    assert bn_analysis.parse_args(["--paper"]).probe_etas == [0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]
    assert bn_analysis.parse_args(["--paper", "--small-steps"]).probe_etas == [0.01, 0.03, 0.1, 0.3, 0.5, 0.75, 1.0,
                                                                               1.5, 2.0, 3.0, 4.0]
    assert bn_analysis.parse_args(["--small-steps", "--probe-etas", "0.1", "1"]).probe_etas == [0.01, 0.03, 0.1, 0.3, 1]


def test_claims_table_from_known_arrays():
    """Paired medians after the first epoch (steps >= 2) decide each claim; the first probe never counts."""
    runs = [known_run("vgg_a", 0.1, [3, 2, 2, 1], [100, 1, 3], [100, 4, 6], [1000, 10, 30]),
            known_run("vgg_a_bn", 0.1, [3, 2, 1, 1], [0, 0.5, 0.5], [0, 8, 8], [0, 1, 3])]
    table = bn_analysis.claims_table(runs, dict(opt="sgd")).splitlines()
    lines = {line.split(" | ")[0][2:]: line.split(" | ") for line in table if line.startswith("| ")}
    loss = lines["loss changes less along the probe direction (loss range over η)"]
    assert loss[3:5] == ["2", "0.5"] and loss[5].startswith("0.3333 [") and loss[6] == "100% of 2"
    assert loss[7] == "holds" and loss[8] == "– |"  # both ratios (0.5, 1/6) below 1, so every resample's median is
    beta = lines["effective β-smoothness is smaller (largest ‖Δ∇L‖ / ‖ηd‖)"]
    assert beta[3:5] == ["5", "8"] and beta[6:9] == ["0% of 2", "does not hold", "– |"]  # no etas: no check
    sharp = lines["sharpness is lower (top Hessian eigenvalue, fixed batch; beyond the paper)"]
    assert sharp[3:5] == ["20", "2"]
    band = lines[bn_analysis.BAND_CLAIM]
    assert band[3:5] == ["0", "0"] and band[7].startswith("not measured")  # one lr: no band, no ratio


def test_a_single_spike_does_not_set_the_figures_scale():
    """1,000 losses in [1, 2] and one divergence spike of 1,000: linear y topped at 3 x the 99.5th percentile,
    the spike counted in a note; without the spike nothing is clipped."""
    plt = common.pyplot()
    values = np.concatenate([np.linspace(1, 2, 1000), [1000.0]])
    for data, clipped in ((values, True), (values[:-1], False)):
        fig, ax = plt.subplots()
        ax.plot(data)
        bn_analysis.scale_and_first_epoch(ax, data, 0)
        assert ax.get_yscale() == "linear"
        top, note = ax.get_ylim()[1], " ".join(t.get_text() for t in ax.texts)
        assert 2 <= top < 7 and ("1 value(s) above the top" in note) == clipped
        plt.close(fig)


def test_loss_band_ends_where_a_run_diverged():
    """The baseline's lr 0.5 run diverges at step 3: its band exists at step 2 only (width 2), not as the
    zero spread of the one lr left; BN's band 0.5, 0.5, 0.2, 0.1, so the one paired ratio is 0.25 and BN's
    median is taken over that step too."""
    probes = ([1, 1, 1], [1, 1, 1], [1, 1, 1])
    runs = [known_run("vgg_a", 0.1, [3, 2, 2, 1, 1, 1], *probes), known_run("vgg_a", 0.5, [3, 2, 4, np.nan], *probes),
            known_run("vgg_a_bn", 0.1, [3, 2, 2, 1, 1, 1], *probes),
            known_run("vgg_a_bn", 0.5, [3, 2, 2.5, 1.5, 1.2, 1.1], *probes)]
    table = bn_analysis.claims_table(runs, dict(opt="sgd")).splitlines()
    band = next(line for line in table if line.startswith(f"| {bn_analysis.BAND_CLAIM}")).split(" | ")
    assert band[3:6] == ["2", "0.5", "0.25 [0.25, 0.25]"] and band[6] == "100% of 1"


def test_figures_average_each_step_over_the_seeds_that_reached_it():
    """Seed 0 diverged after 2 probes (its last value non-finite), seed 1 ran all 4: the drawn mean is over both
    seeds while both ran and seed 1's own values after, for 1D and [probe, η] arrays; titles say so."""
    runs = [dict(model="vgg_a", lr=0.5, arrays=dict(step_loss=np.array([2.0, 4.0, np.inf]),
                                                    probe_losses=np.array([[1.0, 3.0], [5.0, 7.0]]))),
            dict(model="vgg_a", lr=0.5, arrays=dict(step_loss=np.array([4.0, 6.0, 3.0, 1.0]),
                                                    probe_losses=np.array([[3.0, 5.0], [7.0, 9.0], [1.0, 1.0]])))]
    assert bn_analysis.group_mean(runs, "step_loss").tolist() == [3.0, 5.0, 3.0, 1.0]
    assert bn_analysis.group_mean(runs, "probe_losses").tolist() == [[2, 4], [6, 8], [1, 1]]
    assert bn_analysis.group_mean(runs, "probe_betas") is None
    assert bn_analysis.with_seeds_note("β", runs) == "β\nmean over 2 seeds, at each step over those that reached it"
    assert bn_analysis.with_seeds_note("β", runs[:1]) == "β"


def test_figure_titles_say_the_run_in_words_and_curves_are_redrawn_in_percent(tmp_path, monkeypatch):
    """Figures once carried run names ("resvgg16 grid_standard_leaky_relu_ce_sgd") and accuracy as a fraction;
    now the configuration in words, from the config.json beside the checkpoint (its folder name without one),
    and report.py redraws every run's curves from metrics.jsonl."""
    cfg = common.parse_config("task1/train.py", ["--arch", "light", "--act", "leaky_relu", "--opt", "sgd", "--recipe",
                                                 "fast", "--width", "0.25", "--subset", "10000"])
    words = "ResVGG16-light, LeakyReLU, cross-entropy, SGD lr 0.1 (recipe fast, width 0.25, 10,000 training images, seed 0)"
    assert common.describe(cfg) == words
    assert common.describe(common.parse_config("task2/train.py", ["--model", "vgg_a_bn", "--opt", "adam"])) == \
        "VGG-A + BN, ReLU, cross-entropy, Adam lr 0.001 (seed 0)"
    # a try says what it departs from its recipe in (a recipe setting at its own value says nothing)
    try_cfg = common.parse_config("task1/train.py", ["--arch", "light", "--act", "leaky_relu", "--opt", "sgd",
                                                     "--recipe", "fast", "--label-smoothing", "0.2",
                                                     "--zero-init-residual", "--epochs", "6", "--tta", "flip",
                                                     "--wd", "5e-4"])
    assert common.describe(try_cfg) == ("ResVGG16-light, LeakyReLU, cross-entropy, SGD lr 0.1 (recipe fast, epochs 6, "
                                        "label smoothing 0.2, zero init residual, seed 0)")
    run = tmp_path / "runs" / "light"
    run.mkdir(parents=True)
    assert landscape.run_words(str(run / "best.pt")) == "light"
    common.write_json(str(run / "config.json"), cfg)
    assert landscape.run_words(str(run / "best.pt")).replace("\n", " ") == words
    # a surface's title also says how it was made: directions, images, and BN's mode where the model has BN
    settings = dict(trajectory=None, interp=None, norm="filter", n_items=2000, split="train", bn_mode="train")
    assert landscape.protocol_words(dict(settings=settings, model="vgg_a_bn")).replace("\n", " ") == \
        "filter-normalized random directions, loss on 2,000 training images, BN in train mode (statistics re-estimated)"
    assert landscape.protocol_words(dict(settings=dict(settings, interp="b.pt", n_items=-1, split="test"),
                                         model="vgg_a")).replace("\n", " ") == \
        "the straight path between two checkpoints, loss on all test images"
    (run / "metrics.jsonl").write_text("".join(json.dumps(dict(epoch=e, train_loss=1.0, val_loss=1.0, train_acc=0.5,
                                                               val_acc=0.25 * e)) + "\n" for e in (1, 2)))
    drawn = {}
    monkeypatch.setattr(common, "save_figure", lambda fig, path: drawn.update({path: fig}))
    os.makedirs(tmp_path / "figures" / "curves")
    assert report.draw_curves(str(tmp_path)) == []  # under way: no result.json yet
    fake_result(str(run), 0.5, **cfg)
    assert report.draw_curves(str(tmp_path)) == ["light"]
    fig = drawn[str(tmp_path / "figures" / "curves" / "light.png")]
    assert fig._suptitle.get_text() == words and fig.axes[1].get_ylabel() == "accuracy (%)"
    assert fig.axes[1].lines[1].get_ydata().tolist() == [25.0, 50.0]


def test_a_report_redraws_only_the_curves_whose_files_changed(tmp_path, monkeypatch):
    """Drawing every run's curves was most of a report's time (68 figures for cpu-full): the next report copies a
    figure whose run files and plotting code are unchanged, and draws again the one whose metrics changed."""
    for name in ("a", "b"):
        run = tmp_path / "runs" / name
        fake_result(str(run), 0.5)
        common.write_json(str(run / "config.json"), common.parse_config("task2/train.py", ["--model", "vgg_a"]))
        (run / "metrics.jsonl").write_text(json.dumps(dict(epoch=1, train_loss=1.0, val_loss=1.0, train_acc=0.5,
                                                           val_acc=0.5)) + "\n")
    drawn = []
    plot = common.plot_curves
    monkeypatch.setattr(common, "plot_curves", lambda history, path, title="": (drawn.append(
        os.path.basename(path)), plot(history, path, title)))
    report.write_report(str(tmp_path))
    assert drawn == ["a.png", "b.png"]
    first = (tmp_path / "figures" / "curves" / "a.png").read_bytes()
    with open(tmp_path / "runs" / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(dict(epoch=2, train_loss=0.5, val_loss=0.9, train_acc=0.7, val_acc=0.6)) + "\n")
    report.write_report(str(tmp_path))
    assert drawn == ["a.png", "b.png", "b.png"]  # a copied, b drawn again
    assert (tmp_path / "figures" / "curves" / "a.png").read_bytes() == first
    assert sorted(os.listdir(tmp_path / "figures" / "curves")) == ["a.png", "b.png", report.CURVE_STAMPS]


def test_a_seed_that_diverged_or_stalled_is_drawn_alone_and_named(monkeypatch):
    """The --paper curves once averaged VGG-A lr 0.5's diverged seed (best 64 %) with its stalled one (10 %)
    into one 36 % line, unmarked. Such a group is drawn seed by seed, each outcome in the legend; a group whose
    seeds all trained stays one mean line; plain model names; accuracy in %."""
    drawn = {}
    monkeypatch.setattr(bn_analysis.common, "save_figure", lambda fig, path: drawn.update({path: fig}))
    def run(model, lr, seed, status, best, accs):  # noqa: E306
        return dict(model=model, lr=lr, seed=seed, result=dict(status=status, best_val_acc=best, epochs_run=len(accs),
                                                               config=dict(num_classes=10)),
                    history=[dict(train_loss=1.0, val_acc=a) for a in accs],
                    arrays=dict(probe_step=np.array([1.0, 2.0]), probe_betas=np.array([[1.0], [2.0]]),
                                steps_per_epoch=1, etas=np.array([1.0])))
    runs = [run("vgg_a", 0.5, 0, "diverged", 0.64, [0.3, 0.64]), run("vgg_a", 0.5, 1, "completed", 0.104, [0.1, 0.1]),
            run("vgg_a_bn", 0.5, 0, "completed", 0.7, [0.5, 0.7]), run("vgg_a_bn", 0.5, 1, "completed", 0.8, [0.6, 0.8])]
    bn_analysis.plot_runs_curves(runs, "curves.png")
    acc = drawn["curves.png"].axes[1]
    lines = {line.get_label(): np.round(line.get_ydata(), 6).tolist() for line in acc.lines}
    assert lines == {"VGG-A, lr 0.5, seed 0 (diverged at epoch 2)": [30.0, 64.0],
                     "VGG-A, lr 0.5, seed 1 (stalled, best val 10.4 %)": [10.0, 10.0],
                     "VGG-A + BN, lr 0.5": [55.0, 75.0]}
    assert acc.get_ylabel() == "validation accuracy (%)" and "each seed alone" in drawn["curves.png"]._suptitle.get_text()
    bn_analysis.plot_probe(runs, "beta.png", "probe_betas", "β", "β", band=False)
    assert [line.get_label() for line in drawn["beta.png"].axes[0].lines][:3] == [
        "VGG-A, seed 0 (diverged at epoch 2)", "VGG-A, seed 1 (stalled, best val 10.4 %)", "VGG-A + BN"]


def seeded_runs(ratios_by_seed, probes=40):
    """vgg_a and vgg_a_bn over seeds: the baseline's loss range 2 at every probe, BN's 2 × the given ratio
    (cycled); 2 steps per epoch, a probe every step; step 0 says the opposite and must be left out."""
    runs = []
    for seed, ratios in enumerate(ratios_by_seed):
        for model, scale in (("vgg_a", None), ("vgg_a_bn", ratios)):
            ranges = [2.0 * (1 if scale is None else scale[i % len(scale)]) for i in range(probes)]
            ranges[0] = 2.0 if scale is None else 200.0
            run = known_run(model, 0.1, [1.0] * probes, [0] * 3, [1] * 3, [1] * 3)
            run["arrays"].update(probe_step=np.arange(probes), probe_losses=np.array([[1.0, 1.0 + r] for r in ranges]))
            runs.append(dict(run, seed=seed))
    return runs


def test_steps_budget_and_the_papers_protocol(fake_data, tmp_path, capsys):
    """--steps 12 on 8-step epochs: 12 optimizer steps, the second epoch cut short, the schedule over the 12;
    the progress lines count the epochs the budget takes, not --epochs."""
    cfg = parse([*TINY, "--data-dir", fake_data, "--opt", "adam", "--steps", "12", "--epochs", "5",
                 "--out", str(tmp_path)])
    result = common.train(cfg)
    assert "epoch   2/2 |" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert result["status"] == "completed" and result["epochs_run"] == 2 and result["steps"] == 12
    assert int(ckpt["optimizer"]["state"][0]["step"]) == 12 and ckpt["scheduler"]["last_epoch"] == 12
    args = bn_analysis.parse_args(["--paper", "--data-dir", fake_data])
    cfg = bn_analysis.run_config(args, "vgg_a", args.lrs[0], str(tmp_path / "run"))
    assert (cfg["opt"], cfg["momentum"], cfg["wd"], cfg["batch_size"], cfg["schedule"], cfg["augment"],
            cfg["init"], cfg["steps"]) == ("sgd", 0.0, 0.0, 128, "none", False, "xavier", 15000)
    assert args.lrs == [0.1, 0.5] and args.probe_scale == "relative" and args.probe_direction == "grad"
    assert len(args.probe_etas) >= 7 and min(args.probe_etas) == 0.5 and max(args.probe_etas) == 4
    assert cfg["steps"] // args.probe_every >= 300


def test_every_job_of_every_profile_has_a_prediction(monkeypatch):
    """predict once left out five of the cpu profile's seven phase-2 jobs and its spectra and path surfaces,
    and failed on cpu-full: now it plans every phase as run_all.sh would, on the results the earlier leave."""
    import throughput
    monkeypatch.setattr(throughput, "measured_rates", lambda cfg, device, cache, min_seconds: (1000.0, 2000.0))
    for profile in sorted(reproduce.PROFILES):
        jobs = throughput.predict_jobs(profile, torch.device("cpu"), {})
        assert jobs and all(0 < seconds < math.inf for *_, seconds in jobs), profile
        if profile == "cpu":
            names = [job[-1].split("/")[-1] for phase, job, _ in jobs if phase == "landscapes"]
            assert names == ["best_sgd", "best_adam", "interp_sgd_adam", "vgg_a", "vgg_a_bn", "vgg_a_bn_bntrain",
                             "trajectory_sgd", "trajectory_adam", "spectrum_vgg_a", "spectrum_vgg_a_bn_eval",
                             "spectrum_vgg_a_bn_train", "spectrum_vgg_a_filter", "spectrum_vgg_a_bn_eval_filter",
                             "spectrum_vgg_a_bn_train_filter", "visualize"]
            assert sum(phase == "analysis" for phase, *_ in jobs) == 8
    assert throughput.hessian_passes(["--hessian", "--hessian-iters", "10", "--repeats", "2"]) == 2 * 10 * 2
    assert throughput.hessian_passes(["--hessian-trace", "--trace-probes", "8", "--hessian-density", "--slq-probes",
                                      "2", "--slq-steps", "5"]) == 2 * (8 + 2 * 5)


def test_predicted_time_of_the_cpu_profiles_paper_analysis_counts_every_run_and_probe(tmp_path):
    """The bench's predictor reads a BN analysis job as bn_analysis.py does: 2 models x 2 lrs x 2 seeds of
    15,000 steps, 8 passes per probe every 50 steps, a 20-iteration Lanczos on 256 images every 500 steps."""
    import throughput
    job = next(j for j in reproduce.plan("analysis", "cpu", str(tmp_path), "data") if "bn_analysis_paper" in j[-1])
    runs, extra = throughput.bn_analysis_runs(job[1:])
    assert len(runs) == 8 and {r["model"] for r in runs} == {"vgg_a", "vgg_a_bn"}
    assert all(r["steps"] == 15000 and r["width"] == 0.25 and r["batch_size"] == 128 for r in runs)
    assert extra == pytest.approx(8 / 50 + 2 * 20 * 256 / 128 / 500)
    cache = {(r["model"], r["arch"], r["width"], r["batch_size"]): (1000.0, 2000.0) for r in runs}  # img/s, given
    per_run = 15000 * 128 * (1 + extra) / 1000 + (5000 * 43 + 2 * 10000) / 2000
    assert throughput.training_seconds(job, torch.device("cpu"), cache) == pytest.approx(8 * per_run)


def test_predicted_time_of_a_proxy_try_reads_no_test_set_and_counts_its_flip_tta(tmp_path):
    """A --no-test proxy: 39 steps of 256 a epoch for 6 epochs, validation every epoch and best.pt's flip TTA on
    the 5,000 validation images (two passes), no test images; the headline job (30 epochs of 351 steps of 128,
    --tta flip) tests twice on 10,000 and runs best.pt's flip TTA on validation and test."""
    import throughput
    jobs = {os.path.basename(j[-1]): j for j in reproduce.plan("train", "cpu-full", str(tmp_path), "data")}
    cache = {("resvgg16", "light", 1.0, 256): (1000.0, 2000.0), ("resvgg16", "light", 1.0, 128): (800.0, 2000.0)}
    seconds = throughput.training_seconds(jobs["proxy_base"], torch.device("cpu"), cache)
    assert seconds == pytest.approx(39 * 6 * 256 / 1000 + (5000 * 6 + 2 * 5000) / 2000)
    headline = throughput.training_seconds(jobs["t1_light_leaky_relu_sgd_fast"], torch.device("cpu"), cache)
    assert headline == pytest.approx(351 * 30 * 128 / 800 + (5000 * 30 + 2 * 10000 + 2 * 15000) / 2000)


@pytest.mark.parametrize("ratios, expected", [
    ([[0.5, 0.6, 0.7], [0.55, 0.65]], "holds"),
    ([[1.5, 1.2], [1.3, 1.4, 1.6]], "does not hold"),
    ([[0.5, 1.5], [0.6, 1.4]], "inconclusive"),
])
def test_paired_verdicts_tell_a_win_from_a_tie(ratios, expected):
    runs = seeded_runs(ratios)
    pairs = bn_analysis.claim_pairs(runs, "vgg_a", "vgg_a_bn", 0.1, "loss_range")
    assert len(pairs) == 2 and len(pairs[0][0]) == 38  # two seeds, the 38 probes after the first epoch
    v = bn_analysis.verdict(bn_analysis.paired_ratios(pairs))
    assert v["verdict"] == expected and v["n"] == 76 and v["low"] <= v["ratio"] <= v["high"]
    smaller = np.mean([r < 1 for seed in ratios for r in (seed * 40)[2:40]])
    assert v["smaller"] == pytest.approx(smaller)


@SLOW
def test_bn_analysis_writes_everything_and_replots(fake_data, tmp_path):
    out = tmp_path / "bn"
    command = [sys.executable, BN_ANALYSIS, "--data-dir", fake_data, "--no-download", "--device", "cpu", "--width",
               "0.125", "--batch-size", "32", "--epochs", "1", "--lrs", "1e-3", "1e-2", "--probe-every", "2",
               "--sharpness-every", "3", "--sharpness-images", "16", "--sharpness-iters", "2", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "run 4 of 4" in proc.stdout
    for name in bn_analysis.BN_FIGURES + ["summary.md", "bn_analysis.json", "bn_analysis.npz"]:
        assert os.path.getsize(out / name) > 0, name
    runs, settings = bn_analysis.load_bn_analysis(out)
    assert [(r["model"], r["lr"]) for r in runs] == [("vgg_a", 1e-3), ("vgg_a", 1e-2), ("vgg_a_bn", 1e-3),
                                                      ("vgg_a_bn", 1e-2)]
    for r in runs:
        a = r["arrays"]
        assert a["step_loss"].shape == (8,) and a["probe_step"].tolist() == [0, 2, 4, 6]
        assert a["probe_losses"].shape == a["probe_grad_dists"].shape == a["probe_betas"].shape == (4, 5)
        assert np.allclose(a["etas"], np.array(settings["probe_etas"]) * r["lr"])
        assert np.isfinite(a["probe_betas"]).all() and (a["probe_betas"] > 0).all()
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0] == "## Does BN help optimization? vgg_a vs vgg_a_bn"
    assert sum(line.startswith("| model | lr | status") for line in summary) == 1
    assert len([line for line in summary if line.startswith("| vgg_a")]) == 4
    # the raw numbers alone redraw every figure and the table
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("bn_analysis.json", "bn_analysis.npz"):
        (alone / name).write_bytes((out / name).read_bytes())
    proc = subprocess.run([sys.executable, BN_ANALYSIS, "--replot", str(alone)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (alone / "summary.md").read_text() == (out / "summary.md").read_text()
    for name in bn_analysis.BN_FIGURES:
        assert (alone / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # a second call reuses the finished runs instead of training again; other probe settings train again
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.count("reusing") == 4 and "parameters |" not in proc.stdout
    proc = subprocess.run([*command, "--lrs", "1e-3", "--models", "vgg_a", "vgg_a_bn", "--probe-every", "3"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "reusing" not in proc.stdout
    assert "not a finished run of these settings" in proc.stdout


# ---------------------------------------------------------------------------------------- landscapes

LANDSCAPE = os.path.join(ROOT, "task2", "landscape.py")


@pytest.fixture(scope="module")
def checkpoints(fake_data, tmp_path_factory):
    """Two briefly trained tiny ResVGG16 checkpoints of one architecture (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("ckpts")
    for seed in (0, 1):
        common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "1", "--seed", str(seed),
                            "--out", str(root / f"s{seed}")]))
    return str(root / "s0" / "best.pt"), str(root / "s1" / "best.pt")


def plain_loss(model, fake_data, n=100, split="train"):
    """Loss and accuracy on the first n images of the fixture runs' own training (or validation) images."""
    data = common.load_cifar10(fake_data, download=False)
    order = torch.randperm(len(data["train_y"]), generator=torch.Generator().manual_seed(common.VAL_SPLIT_SEED))
    n_val = len(order) // 10  # --val 5000 is capped at a tenth
    idx = (order[n_val:] if split == "train" else order[:n_val])[:n]
    return common.evaluate(model, data["train_x"][idx], data["train_y"][idx], common.loss_fn("ce"),
                           torch.device("cpu"))


def test_landscape_splits_are_the_runs_own(checkpoints, fake_data, tmp_path):
    """--split train never evaluates the run's validation images; --split val evaluates exactly them."""
    model, _ = common.load_checkpoint(checkpoints[0])
    for split in ("train", "val"):
        out = tmp_path / split
        assert landscape.main(["--ckpt", checkpoints[0], "--x", "0:0:1", "--split", split, "--n-items", "50",
                               "--data-dir", fake_data, "--no-download", "--precision", "fp32", "--out", str(out)]) == 0
        with np.load(out / "surface.npz") as s:
            assert s["loss"][0] == pytest.approx(plain_loss(model, fake_data, 50, split)[0], abs=1e-5), split


def test_random_direction_invariants():
    torch.manual_seed(0)
    model = common.ResVGG16("light", width=0.125)
    params = dict(model.named_parameters())
    d = common.random_direction(model, torch.Generator().manual_seed(3))
    assert set(d) == set(params)
    for name, w in params.items():
        if w.dim() > 1:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1), rtol=1e-5)
        else:
            assert not d[name].any(), name  # biases and BN weights: zero by default
    again = common.random_direction(model, torch.Generator().manual_seed(3))
    assert all(torch.equal(d[k], again[k]) for k in d)
    with_bn = common.random_direction(model, torch.Generator().manual_seed(3), include_bn_bias=True)
    for name, w in params.items():  # as in Li et al.'s code: a 1-d tensor's direction is the tensor itself
        assert torch.equal(with_bn[name], w.detach()) if w.dim() <= 1 else torch.equal(with_bn[name], d[name]), name
    layer = common.random_direction(model, torch.Generator().manual_seed(3), norm="layer")
    conv = next(n for n, w in params.items() if w.dim() == 4)
    assert layer[conv].norm().item() == pytest.approx(params[conv].norm().item(), rel=1e-5)


def test_surface_points_are_the_model_at_theta_plus_delta(checkpoints, fake_data, tmp_path):
    """A 3 x 5 grid: every loss[i, j] equals a plain evaluation of weights θ + x[i]·dx + y[j]·dy set by hand;
    (0, 0) is the checkpoint itself."""
    out = tmp_path / "surface"
    assert landscape.main(["--ckpt", checkpoints[0], "--x", "-1:1:3", "--y", "-1:1:5", "--n-items", "100",
                           "--data-dir", fake_data, "--no-download", "--device", "cpu", "--precision", "fp32",
                           "--out", str(out)]) == 0
    with np.load(out / "surface.npz") as s:
        surface = dict(s)
    assert surface["loss"].shape == surface["acc"].shape == (3, 5) and surface["done"].all()
    assert surface["x"].tolist() == [-1, 0, 1] and surface["y"].tolist() == [-1, -0.5, 0, 0.5, 1]
    model, _ = common.load_checkpoint(checkpoints[0])
    assert surface["loss"][1, 2] == pytest.approx(plain_loss(model, fake_data)[0], abs=1e-5)
    directions = torch.load(out / "directions.pt", weights_only=True)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, x in enumerate(surface["x"]):
        for j, y in enumerate(surface["y"]):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(theta[n] + x * directions["x"][n] + y * directions["y"][n])
            loss, acc = plain_loss(model, fake_data)
            assert surface["loss"][i, j] == pytest.approx(loss, abs=1e-5) and surface["acc"][i, j] == acc, (i, j)
    info = read_json(out / "surface.json")
    assert info["status"] == "complete" and info["points"] == 15 and info["points_per_s"] > 0
    for name in ("contour.png", "heatmap.png", "surface_3d.png"):
        assert os.path.getsize(out / name) > 0
    # --dir-file puts another checkpoint of the same architecture on the same plane
    assert landscape.main(["--ckpt", checkpoints[1], "--x", "-1:1:3", "--n-items", "100", "--dir-file",
                           str(out / "directions.pt"), "--data-dir", fake_data, "--no-download", "--device", "cpu",
                           "--out", str(tmp_path / "other")]) == 0
    reused = torch.load(tmp_path / "other" / "directions.pt", weights_only=True)
    assert all(torch.equal(reused["x"][k], directions["x"][k]) for k in directions["x"])


def test_interrupted_surface_resumes_to_the_same_result(checkpoints, fake_data, tmp_path, monkeypatch):
    args = ["--ckpt", checkpoints[0], "--x", "-1:1:4", "--y", "-1:1:5", "--n-items", "50", "--data-dir", fake_data,
            "--no-download", "--device", "cpu"]
    assert landscape.main([*args, "--out", str(tmp_path / "full")]) == 0
    real_evaluate_at, calls = common.evaluate_at, [0]

    def evaluate_then_interrupt(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C in the middle of the first round
        return real_evaluate_at(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(common, "evaluate_at", evaluate_then_interrupt)
        assert landscape.main([*args, "--out", str(tmp_path / "cut")]) == 130
    partial = read_json(tmp_path / "cut" / "surface.json")
    assert partial["status"] == "partial" and 0 < partial["points_done"] < 20
    assert landscape.main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    with np.load(tmp_path / "full" / "surface.npz") as a, np.load(tmp_path / "cut" / "surface.npz") as b:
        assert np.array_equal(a["loss"], b["loss"]) and np.array_equal(a["acc"], b["acc"])


@SLOW
def test_torchrun_two_ranks_equal_one_process(checkpoints, fake_data, tmp_path):
    args = [LANDSCAPE, "--ckpt", checkpoints[0], "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "50",
            "--data-dir", fake_data, "--no-download", "--device", "cpu"]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert read_json(tmp_path / "two" / "surface.json")["world_size"] == 2
    with np.load(tmp_path / "one" / "surface.npz") as a, np.load(tmp_path / "two" / "surface.npz") as b:
        assert np.allclose(a["loss"], b["loss"], rtol=0, atol=1e-6) and np.array_equal(a["acc"], b["acc"])


def test_interpolation_ends_are_the_two_checkpoints(checkpoints, fake_data, tmp_path):
    out = tmp_path / "interp"
    assert landscape.main(["--ckpt", checkpoints[0], "--interp", checkpoints[1], "--x", "-0.5:1.5:5",
                           "--n-items", "100", "--data-dir", fake_data, "--no-download", "--device", "cpu",
                           "--precision", "fp32", "--out", str(out)]) == 0
    with np.load(out / "surface.npz") as s:
        alphas, losses = s["x"].tolist(), s["loss"]
    assert alphas == [-0.5, 0, 0.5, 1, 1.5] and losses.shape == (5,)
    for alpha, ckpt in ((0, checkpoints[0]), (1, checkpoints[1])):
        model, _ = common.load_checkpoint(ckpt)  # its own weights and BN running statistics
        assert losses[alphas.index(alpha)] == pytest.approx(plain_loss(model, fake_data)[0], abs=1e-5)
    assert os.path.getsize(out / "loss_1d.png") > 0


def test_hessian_extremes_of_least_squares():
    """L(w) = mean ½(xᵀw − t)² has Hessian XᵀX / n: Lanczos must find its largest and smallest eigenvalue."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 3, 8, dtype=torch.float64)
    t = torch.randn(200, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(8, 1, bias=False).double()

    def batch_losses():
        for i in range(0, 200, 64):
            yield 0.5 * ((model(x[i:i + 64]).squeeze(1) - t[i:i + 64]) ** 2).sum()
    steps = []
    h = common.hessian_extremes(model, batch_losses, 200, iters=20, tol=1e-9,
                                on_step=lambda j, top: steps.append((j, top)))
    exact = torch.linalg.eigvalsh(x.T @ x / 200)
    assert h["converged"] and h["iterations"] <= 8
    # every step reported, its top Ritz value growing towards the answer (what the bench's time-to-answer needs)
    assert [j for j, _ in steps] == list(range(1, h["iterations"] + 1)) and steps[-1][1] == h["top"]
    assert all(a <= b + 1e-12 for (_, a), (_, b) in zip(steps, steps[1:]))
    assert (h["top"], h["bottom"]) == (pytest.approx(exact[-1].item(), rel=1e-9), pytest.approx(exact[0].item(),
                                                                                               rel=1e-9))


def test_the_bench_times_our_top_eigenvalue_to_the_first_step_that_reaches_pyhessians():
    import throughput
    steps = [(0, -math.inf, 100.0), (1, 1.2, 103.0), (2, 1.52, 106.5), (3, 1.56, 110.0)]
    assert throughput.reached(steps, 1.525) == dict(value=1.56, seconds=10.0, products=3, seconds_per_product=3.3333,
                                                    reached=True)
    assert throughput.reached(steps, 1.5)["products"] == 2 and not throughput.reached(steps, 1.6)["reached"]


def test_hessian_extremes_find_a_saddle_and_say_when_not_converged():
    """Eigenvalues +1 and −1 (a saddle): power iteration reported 0.4567 as converged; Lanczos finds both, and
    with too few iterations it says it has not converged, with a residual that shows it."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    values = torch.tensor([1.0, -1.0, 0.9, -0.8, 0.5, 0.3, 0.1, -0.05, 0.02, 0.0, -0.4, 0.6], dtype=torch.float64)
    a = q @ torch.diag(values) @ q.T
    model = Quadratic(torch.randn(12, generator=gen, dtype=torch.float64))
    losses = lambda: iter([0.5 * model.theta @ a @ model.theta])  # noqa: E731
    h = common.hessian_extremes(model, losses, 1, iters=30, tol=1e-8)
    assert h["converged"] and h["top"] == pytest.approx(1.0, rel=1e-9) and h["bottom"] == pytest.approx(-1.0, rel=1e-9)
    short = common.hessian_extremes(model, losses, 1, iters=3, tol=1e-8)
    assert not short["converged"] and short["iterations"] == 3 and short["residual_top"] > 1e-3


def tiny_net_hessian():
    """A VGG-A + BN of a few hundred parameters in float64 (BN in eval mode, statistics from a training-mode
    pass), 12 images in batches of 4: its full Hessian by autograd beside the batch_losses the estimators take."""
    torch.manual_seed(0)
    model = common.VGGA(bn=True, width=0.005).double()
    x, y = torch.rand(12, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (12,))
    with torch.no_grad():
        model.train()(x)
    model.eval()
    params = common.trainable(model)
    def batch_losses():
        return (torch.nn.functional.cross_entropy(model(x[i:i + 4]), y[i:i + 4], reduction="sum")
                for i in range(0, 12, 4))
    names = [n for n, p in model.named_parameters()]

    def mean_loss(flat):
        tensors = dict(zip(names, (t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params))))
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return model, batch_losses, torch.autograd.functional.hessian(mean_loss, flat)


def test_one_batch_keeps_its_gradient_graph_for_every_hessian_product():
    """The products from a kept graph equal those rebuilt each time, bit for bit, with one forward pass in all
    instead of one per product."""
    model, _, _ = tiny_net_hessian()
    x, y, forwards = torch.rand(12, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (12,)), []
    model.register_forward_hook(lambda *_: forwards.append(1))
    model.train()  # BN on batch statistics: the kept graph must be the very function each product differs by

    def one_batch():
        yield torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    params = common.trainable(model)
    vectors = torch.randn(5, common.flat_size(params), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rebuilt = common.HessianVectorProduct(params, one_batch, 12)
    expected = [rebuilt(v) for v in vectors]
    assert len(forwards) == 5
    one_batch.batches = 1
    kept = common.HessianVectorProduct(params, one_batch, 12)
    assert all(torch.equal(kept(v), e) for v, e in zip(vectors, expected)) and len(forwards) == 5 + 1


def test_hessian_trace_spectrum_and_blocks_against_the_full_hessian():
    model, batch_losses, full = tiny_net_hessian()
    n = full.shape[0]
    # SLQ: each probe's quadrature reproduces vᵀHᵏv / vᵀv (k = 1, 2) exactly, and the density integrates to 1
    spectrum = common.hessian_spectrum(model, batch_losses, 12, probes=3, steps=12, seed=5)
    generator = torch.Generator().manual_seed(5)
    for nodes, weights in spectrum:
        v = common.rademacher(n, generator, full)
        for k in (1, 2):
            assert (weights * nodes ** k).sum() == pytest.approx((v @ torch.linalg.matrix_power(full, k) @ v / n)
                                                                 .item(), rel=1e-8)
        assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    exact = torch.linalg.eigvalsh(full)
    sigma = float(exact.max() - exact.min()) / 50
    density = common.spectral_density(spectrum, np.linspace(float(exact.min()) - 8 * sigma, float(exact.max())
                                                            + 8 * sigma, 4001), sigma)
    width = float(exact.max() - exact.min()) + 16 * sigma
    assert np.trapezoid(density, dx=width / 4000) == pytest.approx(1, rel=1e-3)
    # Hutchinson: within 4 standard errors of the exact trace
    t = common.hessian_trace(model, batch_losses, 12, probes=64, seed=1)
    assert abs(t["trace"] - full.trace().item()) <= 4 * t["stderr"] and t["stderr"] > 0
    # per block: the top eigenvalue and the trace of the block's own diagonal block of H
    start = 0
    blocks = common.parameter_blocks(model)
    assert [name for name, _ in blocks][:2] == ["features.0+1", "features.4+5"]  # conv + its BN; pools skipped
    for k, (name, params) in enumerate(blocks):
        size = common.flat_size(params)
        sub = full[start:start + size, start:start + size]
        start += size
        if k not in (0, 3, len(blocks) - 1):  # three blocks are enough to check, and quicker
            continue
        top = common.hessian_extremes(model, batch_losses, 12, iters=min(size, 60), tol=1e-10, params=params)["top"]
        assert top == pytest.approx(torch.linalg.eigvalsh(sub)[-1].item(), rel=1e-6, abs=1e-10), name
        t = common.hessian_trace(model, batch_losses, 12, probes=32, seed=2, params=params)
        assert abs(t["trace"] - sub.trace().item()) <= 4 * t["stderr"] + 1e-9, name
    assert start == n  # the blocks cover every parameter, in order


def test_filter_coordinate_hessian_is_d_h_d_and_blind_to_the_scale_bn_leaves_free():
    """--hessian-coords filter: the top eigenvalue and trace of D·H·D (D: each filter's norm) agree with eigvalsh
    and the trace of the full matrix; scaling every conv filter of a VGG-A + BN (each feeds a BN, batch
    statistics) by c leaves the loss and D·H·D unchanged, while the raw Hessian of those filters shrinks 1/c²."""
    model, batch_losses, full = tiny_net_hessian()
    scales = common.filter_scales(common.trainable(model))
    dhd = scales[:, None] * full * scales[None, :]
    top = common.hessian_extremes(model, batch_losses, 12, iters=80, tol=1e-10, coords="filter")["top"]
    assert top == pytest.approx(torch.linalg.eigvalsh(dhd)[-1].item(), rel=1e-5)
    t = common.hessian_trace(model, batch_losses, 12, probes=64, seed=1, coords="filter")
    assert abs(t["trace"] - dhd.trace().item()) <= 4 * t["stderr"]
    torch.manual_seed(0)
    net = common.VGGA(bn=True, width=0.005).double()
    for m in net.modules():  # BN normalizes with each batch's statistics: the loss ignores a filter's scale
        m.train(isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    x, y = torch.rand(12, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (12,))
    def batch_losses():
        return (torch.nn.functional.cross_entropy(net(x[i:i + 6]), y[i:i + 6], reduction="sum") for i in (0, 6))
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    def stats():
        loss = sum(float(b.detach()) for b in batch_losses())
        return loss, [common.hessian_extremes(net, batch_losses, 12, iters=40, tol=1e-9, params=params,
                                              coords=coords)["top"]
                      for params, coords in ((None, "filter"), (convs[:1], "filter"), (convs[:1], "raw"))]
    (loss, (whole, conv_filter, conv_raw)), c = stats(), 3.0
    with torch.no_grad():
        for w in convs:
            w.mul_(c)
    loss_c, (whole_c, conv_filter_c, conv_raw_c) = stats()
    assert loss_c == pytest.approx(loss, rel=1e-5)  # exact but for BN's eps (1e-5 beside the variance)
    assert whole_c == pytest.approx(whole, rel=1e-3) and conv_filter_c == pytest.approx(conv_filter, rel=1e-3)
    assert conv_raw_c == pytest.approx(conv_raw / c ** 2, rel=1e-3)


def test_landscape_hessian_statistics_over_seeds(checkpoints, fake_data, tmp_path):
    out = tmp_path / "h"
    assert landscape.main(["--ckpt", checkpoints[0], "--x", "0:0:1", "--n-items", "8", "--data-dir", fake_data,
                           "--no-download", "--hessian", "--hessian-trace", "--hessian-density", "--per-block",
                           "--repeats", "2", "--hessian-iters", "3", "--trace-probes", "2", "--slq-probes", "2",
                           "--slq-steps", "4", "--bn-mode", "train", "--out", str(out)]) == 0
    info = read_json(out / "surface.json")
    s = info["spectrum"]
    assert s["repeats"] == 2 and s["bn_mode"] == "train" and s["images"] == 8
    assert len(s["trace"]["values"]) == 2 and s["trace"]["std"] >= 0 and len(s["density"]["nodes"]) == 2
    assert {b["name"] for b in s["blocks"]} >= {"features.0", "classifier.1"} and all(
        len(b["top"]["values"]) == 2 for b in s["blocks"])
    assert info["hessian"]["repeats"] == 2 and "top_eigenvalue_std" in info["hessian"]
    # a single point has no 1-D curve (it once drew one dot); a Hessian job is complete with its spectrum figures
    assert info["figures"] == ["spectrum.png", "blocks.png"] and not (out / "loss_1d.png").exists()
    assert all((out / f).stat().st_size > 0 for f in info["figures"]) and reproduce.surface_complete(str(out))
    info["figures"].insert(0, "loss_1d.png")  # as such a surface was saved before: --replot removes the dot
    (out / "loss_1d.png").write_bytes(b"png")
    common.write_json(str(out / "surface.json"), info)
    assert landscape.main(["--replot", str(out)]) == 0
    assert read_json(out / "surface.json")["figures"] == ["spectrum.png", "blocks.png"]
    assert not (out / "loss_1d.png").exists()


def test_trajectory_plane_is_the_pca_of_a_gradient_descent_path():
    """Gradient descent on ½θᵀAθ (A diagonal) from a start in the span of e0 and e1: every θ_t − θ_final lies
    in that plane, so two components explain all of it, and they are numpy's PCA (centred SVD) of the path."""
    a = torch.tensor([1.0, 0.05, 3.0, 0.5, 2.0, 0.2], dtype=torch.float64)
    theta, path = torch.tensor([1.0, 2.0, 0, 0, 0, 0], dtype=torch.float64), []
    for _ in range(40):
        theta = theta - 0.3 * a * theta
        path.append(theta.clone())
    directions, coords, explained = common.trajectory_plane(path, path[-1])
    assert explained.sum() == pytest.approx(1.0, abs=1e-6) and explained[0] >= explained[1]
    assert directions[:, 2:].abs().max() < 1e-6 and torch.allclose(directions.norm(dim=1), torch.ones(2).float())
    diffs = torch.stack(path).numpy() - path[-1].numpy()
    _, s, vt = np.linalg.svd(diffs - diffs.mean(0), full_matrices=False)
    for k in range(2):  # the same components, up to sign, with numpy's explained-variance ratios
        assert abs(float(directions[k].double() @ torch.from_numpy(vt[k]))) == pytest.approx(1.0, abs=1e-6)
    assert explained == pytest.approx(s[:2] ** 2 / (s ** 2).sum(), rel=1e-6)
    assert coords == pytest.approx(diffs @ directions.double().numpy().T, abs=1e-6)
    assert coords[-1] == pytest.approx([0, 0], abs=1e-12)  # the final point is the origin


def test_a_path_resumed_without_the_flag_stays_whole_and_leftovers_are_not_kept(fake_data, tmp_path, monkeypatch):
    """--resume without --save-trajectory keeps the saved interval (the same snapshots as an uninterrupted
    run); a new run in a folder whose run saved no checkpoint starts without that run's snapshots."""
    args = [*TINY, "--data-dir", fake_data, "--epochs", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    common.train(parse([*args, "--save-trajectory", "3", "--out", str(whole)]))
    with monkeypatch.context() as m:
        m.setattr(common, "make_optimizer", cuda_checks.interrupt_at_step(common.make_optimizer, 5))
        assert common.train_main("task1/train.py", [*args, "--save-trajectory", "3", "--out", str(cut)]) == 130
    assert common.train_main("task1/train.py", [*args, "--out", str(cut), "--resume"]) == 0
    assert sorted(os.listdir(cut / "trajectory")) == sorted(os.listdir(whole / "trajectory"))
    os.remove(cut / "last.pt")  # as if killed before its first checkpoint
    common.train(parse([*args, "--seed", "1", "--save-trajectory", "5", "--out", str(cut)]))
    assert sorted(os.listdir(cut / "trajectory")) == ["index.json"] + [f"step{s:08d}.pt" for s in (5, 8, 10, 15, 16)]


def test_a_run_keeps_its_path_and_landscape_draws_it(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    common.train(parse([*TINY, "--data-dir", fake_data, "--epochs", "2", "--save-trajectory", "3", "--out", str(run)]))
    files = sorted(os.listdir(run / "trajectory"))
    steps = [3, 6, 8, 9, 12, 15, 16]  # every 3 steps and each epoch end (8 steps an epoch), none twice
    assert files == ["index.json"] + [f"step{s:08d}.pt" for s in steps]
    snapshot = torch.load(run / "trajectory" / "step00000003.pt", weights_only=True)
    params = common.count_params(common.build_model(read_json(run / "config.json")))
    assert snapshot["params"].dtype == torch.float16 and snapshot["params"].numel() == params
    (run / "trajectory" / "step00000017.tmp4242.pt").write_bytes(b"half a snapshot")  # a kill -9 mid-write
    for bad, said in ((b"PK cut short", "is not a readable snapshot"),
                      (None, "holds 3 parameters, the model")):  # one of another run
        (run / "trajectory" / "step00000099.pt").write_bytes(bad) if bad else torch.save(
            dict(step=99, epoch=2, params=torch.zeros(3, dtype=torch.float16)), run / "trajectory" / "step00000099.pt")
        assert landscape.main(["--trajectory", str(run), "--x", "-1:1:3", "--n-items", "20", "--data-dir", fake_data,
                               "--no-download", "--out", str(tmp_path / "bad")]) == 2
        assert said in capsys.readouterr().err
    os.remove(run / "trajectory" / "step00000099.pt")
    out = tmp_path / "plane"
    assert landscape.main(["--trajectory", str(run), "--x", "-1:1:3", "--n-items", "20", "--data-dir", fake_data,
                           "--no-download", "--out", str(out)]) == 0
    info = read_json(out / "surface.json")
    path = info["trajectory"]
    assert path["snapshots"] == 7 and path["steps"] == steps and path["bytes_per_snapshot"] == 2 * params
    assert max(map(abs, path["x"] + path["y"])) == pytest.approx(1.0) and len(path["loss"]) == 7
    assert abs(path["x"][-1]) < 0.05 and abs(path["y"][-1]) < 0.05  # the last snapshot is the final weights
    assert 0.5 < sum(path["explained_variance"]) <= 1 + 1e-9 and info["settings"]["ckpt"].endswith("last.pt")
    assert all((out / f).stat().st_size > 0 for f in ("contour.png", "heatmap.png", "surface_3d.png"))


def test_landscape_rejects_a_direction_file_of_another_architecture(checkpoints, fake_data, tmp_path):
    other = {"x": common.random_direction(common.ResVGG16("light", width=0.25), torch.Generator().manual_seed(0))}
    torch.save(other, tmp_path / "dirs.pt")
    proc = subprocess.run([sys.executable, LANDSCAPE, "--ckpt", checkpoints[0], "--dir-file", str(tmp_path / "dirs.pt"),
                           "--x", "-1:1:3", "--data-dir", fake_data, "--no-download", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "directions do not fit" in proc.stderr and "Traceback" not in proc.stderr


def test_visualize_filters_and_feature_maps(checkpoints, fake_data, tmp_path):
    weight = torch.randn(10, 3, 3, 3)
    grid = visualize.filter_grid(weight, n=6)
    assert grid.shape == (3 * 2 + 1, 3 * 3 + 2, 3)  # 6 filters in 2 rows of 3, 1-pixel gaps
    first = grid[0:3, 0:3]
    assert first.min() == 0 and first.max() == 1  # each filter min-max normalized on its own
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "task1", "visualize.py"), "--ckpt", checkpoints[0],
                           "--n", "4", "--data-dir", fake_data, "--no-download", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("filters.png", "feature_maps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interpolation_beyond_the_checkpoints_reports_non_finite_points(checkpoints, fake_data, tmp_path, capsys):
    """At α = 1.5 the interpolated running variance (1 − α)·v₁ + α·v₂ is negative wherever v₂ < v₁ / 3. It is
    clamped at 0 (no NaN from a negative variance), and a loss that still overflows is counted in surface.json
    and on stdout; --bn-mode train re-estimates the statistics and stays finite."""
    ckpt = torch.load(checkpoints[1], weights_only=True)
    for name in [n for n in ckpt["model"] if n.endswith("running_var")]:
        ckpt["model"][name] = ckpt["model"][name] * 0.1
    torch.save(ckpt, tmp_path / "low_variance.pt")
    args = ["--ckpt", checkpoints[0], "--interp", str(tmp_path / "low_variance.pt"), "--x", "0:1.5:4", "--n-items",
            "50", "--data-dir", fake_data, "--no-download", "--device", "cpu"]
    for mode in ("eval", "train"):
        assert landscape.main([*args, "--bn-mode", mode, "--out", str(tmp_path / mode)]) == 0
        with np.load(tmp_path / mode / "surface.npz") as s:
            loss = s["loss"]
        non_finite = int((~np.isfinite(loss)).sum())
        assert read_json(tmp_path / mode / "surface.json")["non_finite_points"] == non_finite
        assert (f"warning: {non_finite} points have a non-finite loss" in capsys.readouterr().out) == (non_finite > 0)
        assert non_finite == 0 if mode == "train" else np.isfinite(loss[0])  # α = 0 is checkpoint 1 itself


# ---------------------------------------------------------------------------------------- run_all.sh

def table_rows(tables, heading):
    """The data rows of the first Markdown table under a '### <heading>' section."""
    section = tables.split(f"### {heading}", 1)[1].split("\n### ", 1)[0].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    end = next((i for i in range(start, len(section)) if not section[i].startswith("|")), len(section))
    return [[c.strip() for c in row.strip("|").split("|")] for row in section[start + 2:end]]


@SLOW
def test_run_all_smoke_profile_writes_every_table_and_figure(tmp_path):
    data = write_fake_cifar(tmp_path / "data")
    out = tmp_path / "results"
    command = ["bash", os.path.join(ROOT, "run_all.sh"), "--profile", "smoke", "--data-dir", data, "--out", str(out)]
    env = {**os.environ, "PYTHON": sys.executable}
    shards = {}
    for shard in ("0/2", "1/2"):  # phase 1 as two shards into the shared folder at once, as on two machines
        with open(tmp_path / f"shard{shard[0]}.log", "w") as log:
            shards[shard] = subprocess.Popen(command + ["--phase", "1", "--shard", shard, "--no-eta"], env=env,
                                             stdout=log, stderr=subprocess.STDOUT)
    for shard, proc in shards.items():
        proc.wait()
        stdout = (tmp_path / f"shard{shard[0]}.log").read_text()
        assert proc.returncode == 0 and f"train.shard{shard[0]}of2: 32 jobs" in stdout, stdout[-2000:]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)  # every phase: phase 1 is all there
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no failures" in proc.stdout and proc.stdout.count("already complete, skipped") == 64
    log = (out / "run_all.log").read_text()  # the whole run's output, kept beside its results
    assert proc.stdout.strip().splitlines()[-1] in log and f"with {sys.executable} (log: " in log
    assert re.search(r"predicted wall time of --profile smoke: [0-9:]+ \(analysis [0-9:]+, landscapes [0-9:]+; "
                     r"rates measured now on cpu \(\d+ cores\); finished jobs left out\)", log)  # phase 1 was done
    tables = (out / "tables.md").read_text()
    expected = {"1. Hyper-parameter search": (6, 6), "2. The 24-configuration grid": (24, 11),
                "2b. The 24-configuration grid": (24, 11), "3. Loss functions": (3, 7), "4. Task 2": (12, 11),
                "5. How BN helps": (4 * 4 + 1, 9), "6. Sharpness": (4, 6), "7. The Hessian's spectrum": (6, 9),
                "8. Training paths": (2, 6)}
    for heading, (n_rows, n_cols) in expected.items():
        rows = table_rows(tables, heading)
        assert len(rows) == n_rows and all(len(r) == n_cols for r in rows), heading
        assert not any("missing" in cell for r in rows for cell in r), heading
    # the one experiment plan: every training run it names is a linked row of the tables
    jobs = {phase: reproduce.plan(phase, "smoke", str(out), data) for phase in reproduce.PHASES}
    runs = [job[-1] for job in jobs["train"] + jobs["analysis"] if job[0].endswith("train.py")]
    assert len(runs) == 68 and f"[{len(jobs['train'])}/{len(jobs['train'])}]" in proc.stdout  # 2 keep their path
    for run in runs:
        assert f"[{os.path.basename(run)}](runs/{os.path.basename(run)})" in tables, run
    spectra = tables.split("### 7. ", 1)[1].split("\n### ", 1)[0]  # its second table: per block, 3 spectra
    per_block = list(itertools.takewhile(lambda r: r.startswith("|"),
                                         spectra.split("| block |", 1)[1].splitlines()[2:]))  # the raw one
    assert [r.split(" | ")[0] for r in per_block] == [f"| {k}" for k in range(1, 12)]  # VGG-A: 8 conv + 3 linear
    assert per_block[0].split(" | ")[3].startswith("features.0+1: ") and "–" not in "".join(per_block)
    assert [r[2] for r in table_rows(tables, "7. ")] == ["raw"] * 3 + ["filter"] * 3  # both coordinates, all made
    assert spectra.count("| block |") == 2 and "Per block, filter-normalized (D·H·D):" in spectra
    grid = table_rows(tables, "2. The 24-configuration grid")
    assert sum(r[0].startswith("**") for r in grid) == 1  # exactly one best row, in bold
    assert [r[0].strip("*") for r in grid] == [str(k) for k in range(1, 25)]
    for name in ["filters.png", "feature_maps.png", "surface_best_sgd.png", "surface_best_adam.png",
                 "interp_sgd_adam.png", "vgg_a_vs_bn.png", "vgg_a_vs_bn_bn_modes.png", "trajectory_sgd.png",
                 "trajectory_adam.png", "spectra.png"] + \
            [f"bn_analysis_{n}" for n in bn_analysis.BN_FIGURES] + \
            [f"bn_analysis_paper_{n}" for n in bn_analysis.BN_FIGURES if n != "sharpness.png"]:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(figures/{name})" in tables
    curves = os.listdir(out / "figures" / "curves")
    assert sorted(curves) == sorted([f"{os.path.basename(r)}.png" for r in runs] + [report.CURVE_STAMPS])  # each run's
    # a rerun, spread over two workers as with --gpus, finds everything finished: nothing is trained again
    again = subprocess.run(command + ["--gpus", "0,1"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    n_surfaces = sum(job[0].endswith("landscape.py") for job in jobs["landscapes"])
    worker_logs = "".join(p.read_text() for p in (out / "logs").glob("*.gpu*.log"))  # stdout only echoes them live
    assert worker_logs.count("already complete, skipped") == len(runs) + n_surfaces == 68 + 14
    assert "predicted wall time of --profile smoke: nothing left to run" in again.stdout  # nor timed: all done
    assert worker_logs.count("[gpu 0] ") > 0 and worker_logs.count("[gpu 1] ") > 0
    assert "parameters |" not in worker_logs and "points/s |" not in worker_logs


def test_job_runner_continues_after_a_failure_and_reports_it(fake_data, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.write_text(f"task1/train.py --data-dir {tmp_path}/absent --no-download --out {tmp_path}/bad\n"
                    f"task1/train.py {' '.join(TINY)} --data-dir {fake_data} --epochs 1 --out {tmp_path}/good\n")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "task2", "reproduce.py"), "jobs", str(jobs),
                           "--failures", str(tmp_path / "failed")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert (tmp_path / "failed").read_text().split() == [f"{tmp_path}/bad"]
    assert read_json(tmp_path / "good" / "result.json")["status"] == "completed"
    assert "[1/2]" in proc.stdout and "FAILED (exit 2)" in proc.stdout


@pytest.mark.parametrize("flags", [["--val", "-1"], ["--subset", "-5"], ["--test-subset", "-1"], ["--lr", "nan"],
                                   ["--lr", "-0.1"], ["--dropout", "1"], ["--label-smoothing", "1.5"],
                                   ["--batch-size", "0"], ["--momentum", "nan"]])
def test_bad_training_numbers_are_one_line(flags, tmp_path, capsys):
    argv = [*TINY, *flags, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    code = common.train_main("task1/train.py", argv)
    err = capsys.readouterr().err
    assert code == 2 and flags[0] in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["matmul", "--peak-tflops", "fp32=-1", "bf16=nan"], ["precision", "--width", "nan"],
                                  ["precision", "--width", "0"], ["train", "--n-images", "50"], ["table", "--inputs"]])
def test_bench_refuses_values_that_crashed_it_or_printed_nonsense(argv, tmp_path, capsys):
    """Once a negative % and NaN (invalid JSON), tracebacks for a zero or NaN width, too few images, and a table
    of a JSON object instead of a list."""
    import throughput
    if argv[0] == "table":
        common.write_json(tmp_path / "object.json", {"model": "vgg_a"})
        argv = [*argv, str(tmp_path / "object.json")]
        assert throughput.main(argv) == 2
    else:
        with pytest.raises(SystemExit) as stop:
            throughput.main(argv)
        assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and (argv[1] if argv[0] != "table" else "--inputs") in err


def test_the_airbench_calibration_gets_our_images_in_airbench_format(fake_data, tmp_path):
    """airbench reads <folder>/cifar10/{train,test}.pt: uint8 N×32×32×3 images, labels and class names (it would
    make them through torchvision, whose MD5 check our JPEG-derived copy fails); airbench itself is optional."""
    import airbench_calibration
    airbench_calibration.write_airbench_data(str(tmp_path), fake_data, subset=10)
    data = common.load_cifar10(fake_data, download=False)
    train, test = (torch.load(tmp_path / "cifar10" / f"{n}.pt") for n in ("train", "test"))
    assert train["images"].dtype == torch.uint8 and train["images"].shape == (10, 32, 32, 3)
    assert torch.equal(train["images"].permute(0, 3, 1, 2), data["train_x"][:10])
    assert torch.equal(test["labels"], data["test_y"]) and test["classes"] == data["classes"]


def test_a_grid_too_big_for_the_machine_names_its_estimate():
    with pytest.raises(common.UsageError, match=r"a 1000 × 1000 grid \(1,000,000 points\) needs about 0.1 GiB"):
        landscape.check_grid_fits([0.0] * 1000, [0.0] * 1000, memory=2**26)
    landscape.check_grid_fits([0.0] * 1000, [0.0] * 1000, memory=2**30)  # fits


@pytest.mark.parametrize("flags", [["--n-items", "0"], ["--batch-size", "0"], ["--x", "nan:1:3"],
                                   ["--hessian-iters", "0"], ["--y", "-1:inf:3"], ["--x", "-1:1:1000000000"],
                                   ["--x", "-1:1:99999", "--y", "-1:1:99999"], ["--trace-probes", "1"]])
def test_bad_landscape_flags_are_refused_before_any_work(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        landscape.main(["--ckpt", str(tmp_path / "x.pt"), *flags])
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_broken_checkpoints_and_inputs_are_one_line(checkpoints, fake_data, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(checkpoints[0], "rb").read()[:1000])
    for ckpt in (truncated, tmp_path / "missing.pt", fake_data + "/cifar-10-batches-py/test_batch"):
        assert landscape.main(["--ckpt", str(ckpt), "--x", "0:0:1", "--out", str(tmp_path / "o")]) == 2
        assert str(ckpt) in capsys.readouterr().err
    run = tmp_path / "run"
    assert common.train_main("task1/train.py", [*TINY, "--data-dir", fake_data, "--epochs", "1",
                                                "--out", str(run)]) == 0
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:2000])
    assert common.train_main("task1/train.py", [*TINY, "--data-dir", fake_data, "--out", str(run), "--resume"]) == 2
    assert "last.pt is not a checkpoint of this repository (or is truncated)" in capsys.readouterr().err
    args = ["--ckpt", checkpoints[0], "--data-dir", fake_data, "--no-download", "--out", str(tmp_path / "v")]
    assert visualize.main(args) == 0
    drawn = (tmp_path / "v" / "filters.png").read_bytes()
    for bad, named in ((["--image-index", "100000"], "--image-index"), (["--layer", "classifier"], "not feature maps"),
                       (["--layer", "nope", "--n", "2"], "no layer 'nope'")):  # refused before filters.png changes
        assert visualize.main([*args, *bad]) == 2 and named in capsys.readouterr().err
        assert (tmp_path / "v" / "filters.png").read_bytes() == drawn
    assert visualize.main([*args[:2], "--data-dir", str(tmp_path / "nodata"), "--no-download", "--out",
                           str(tmp_path / "v2")]) == 0  # no data: the filters alone
    assert (tmp_path / "v2" / "filters.png").exists() and "no feature maps" in capsys.readouterr().out
    assert bn_analysis.main(["--replot", str(tmp_path / "nothing")]) == 2


def test_resume_note_names_only_the_flags_given(fake_data, tmp_path, capsys):
    run = [*TINY, "--data-dir", fake_data, "--out", str(tmp_path / "r")]
    assert common.train_main("task1/train.py", [*run, "--epochs", "1", "--act", "tanh"]) == 0
    capsys.readouterr()
    assert common.train_main("task1/train.py", [*run, "--epochs", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "ignoring --epochs 3 (saved 1)" in out and "--act" not in out  # act was not given this time
    assert read_json(tmp_path / "r" / "result.json")["epochs"] == 1


def test_a_full_disk_leaves_no_empty_lock_and_an_old_empty_one_is_taken_over(tmp_path, monkeypatch, capsys):
    """A full disk while writing .lock once left it empty, and every later call was refused by 'process  on '."""
    def full(fd, data):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(common.os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            with common.folder_lock(str(tmp_path / "run")):
                pass
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / ".lock"
    lock.write_text("")  # as an older version left it
    with pytest.raises(common.UsageError, match="is in use"):  # it may be being written this very moment
        with common.folder_lock(str(tmp_path / "run")):
            pass
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with common.folder_lock(str(tmp_path / "run")):
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"
    assert "taking over" in capsys.readouterr().out and not lock.exists()


def test_a_folder_has_one_writer(fake_data, tmp_path):
    """A live lock refuses train, landscape and bn_analysis with one line naming the holder; a lock of a process
    that is gone is taken over; a refused call leaves no folder behind."""
    out, host = tmp_path / "run", socket.gethostname()
    out.mkdir()
    (out / ".lock").write_text(f"{os.getpid()} {host}")  # held by this very test process, alive
    commands = [[TRAIN, *TINY, "--data-dir", fake_data, "--epochs", "1", "--out", str(out)],
                [LANDSCAPE, "--ckpt", str(tmp_path / "none.pt"), "--out", str(out)],
                [os.path.join(ROOT, "task2", "bn_analysis.py"), "--out", str(out)]]
    for command in commands:
        proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and f"is in use by process {os.getpid()} on {host}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and os.listdir(out) == [".lock"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{gone.stdout.strip()} {host}")
    proc = subprocess.run([sys.executable, *commands[0]], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "taking over" in proc.stdout and not (out / ".lock").exists()
    missing = tmp_path / "absent" / "run" / "best.pt"
    proc = subprocess.run([sys.executable, LANDSCAPE, "--ckpt", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "absent").exists()  # no folder next to a missing checkpoint


def test_job_runner_refuses_other_settings_and_unreadable_results(fake_data, tmp_path):
    """A folder that holds a run of other settings is not taken as done (the smoke results labelled
    'quick'), and a corrupt result.json is a failed job, listed by name, not a crash."""
    out = tmp_path / "run"
    flags = [*TINY, "--data-dir", fake_data, "--out", str(out)]
    common.train(parse([*flags, "--epochs", "1"]))
    jobs, failures = tmp_path / "jobs", tmp_path / "failed"
    jobs.write_text("".join(f"task1/train.py {shlex.join([*flags, '--epochs', n])}\n" for n in ("2", "1")))
    command = [sys.executable, os.path.join(ROOT, "task2", "reproduce.py"), "jobs", str(jobs), "--failures",
               str(failures)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "holds a run made with other settings (epochs)" in proc.stdout
    assert "[2/2]" in proc.stdout and "already complete, skipped" in proc.stdout
    assert read_json(out / "result.json")["epochs"] == 1  # nothing of it was overwritten
    (out / "result.json").write_text("{ truncated")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert failures.read_text().count("result.json is unreadable") == 2  # listed by name, each time it ran
    assert reproduce.read_result(str(out)) is None
    os.remove(out / "result.json")
    (out / "config.json").write_text("{ truncated")  # once a traceback that ended the phase
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "[2/2]" in proc.stdout
    assert failures.read_text().count("its files cannot be read (CorruptFile: ") == 2
    assert "config.json is not valid JSON" in failures.read_text()


def test_run_all_counts_a_job_runner_that_crashed_as_a_failure(tmp_path):
    """A job runner that dies without listing a job once left run_all.sh saying 'no failures', exit 0."""
    python = tmp_path / "python"
    python.write_text(f"#!/bin/bash\n[ \"$2\" = jobs ] && {{ echo 'Traceback: boom' >&2; exit 1; }}\n"
                      f"exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "--no-eta", "--profile", "smoke", "--phase", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHON": str(python)})
    assert proc.returncode == 1 and "no failures" not in proc.stdout
    assert "train: the job runner stopped (exit 1" in (tmp_path / "out" / "logs" / "failures.txt").read_text()


def fake_result(folder, val_acc, status="completed", **config):
    os.makedirs(folder, exist_ok=True)
    common.write_json(os.path.join(folder, "result.json"), dict(
        status=status, best_val_acc=val_acc, test_acc_at_best_val=val_acc - 0.1, final_test_acc=val_acc - 0.1,
        epochs_run=1, epochs=1, train_seconds=1.0, params=10, convergence_epoch=1, device="cpu", config=config))


def test_per_block_spectra_are_drawn_by_block_position(tmp_path, monkeypatch):
    """VGG-A names its blocks features.0, .3, ...; VGG-A + BN features.0+1, .4+5, ...: drawn by name, the BN
    network's blocks once landed after VGG-A's. Both are drawn at positions 1..n."""
    drawn = {}
    monkeypatch.setattr(report.common, "save_figure", lambda fig, path: drawn.update(fig=fig))
    block = lambda name, top: dict(name=name, top=dict(mean=top))  # noqa: E731
    report.plot_spectra({"raw": {"vgg_a": dict(blocks=[block("features.0", 5.0), block("features.3", 2.0)]),
                                 "vgg_a_bn": dict(blocks=[block("features.0+1", 9.0), block("features.4+5", 3.0)])}},
                        str(tmp_path / "spectra.png"))
    lines = drawn["fig"].axes[1].lines
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [1, 2]]
    assert [line.get_label() for line in lines] == ["vgg_a", "vgg_a_bn"]


def test_a_failing_report_keeps_the_figures_its_old_tables_link(tmp_path, monkeypatch):
    fake_result(str(tmp_path / "runs" / "some_run"), 0.5)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "old.png").write_bytes(b"drawn before")
    (tmp_path / "tables.md").write_text("links figures/old.png")

    def broken(out):
        raise RuntimeError("a section failed")

    with monkeypatch.context() as m:
        m.setattr(report, "hp_table", broken)
        with pytest.raises(RuntimeError):
            report.write_report(str(tmp_path))
    assert (tmp_path / "figures" / "old.png").read_bytes() == b"drawn before"
    assert (tmp_path / "tables.md").read_text() == "links figures/old.png"
    report.write_report(str(tmp_path))  # drawn afresh: nothing stale stays, nothing kept aside
    assert not (tmp_path / "figures" / "old.png").exists() and (tmp_path / "figures" / "curves").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["figures", "runs", "tables.md"]


def test_seeds_are_planned_and_summarized_as_mean_and_sample_std(tmp_path):
    jobs = reproduce.plan("train", "smoke", str(tmp_path), "data", seeds=3)
    outs = [job[-1] for job in jobs]
    assert len(jobs) == 3 * 64 and len(set(outs)) == len(outs)  # both recipes in the smoke profile
    seed_two = [job for job in jobs if job[-1].endswith("grid_light_tanh_nll_sgd_s2")]
    assert len(seed_two) == 1 and seed_two[0][-4:-2] == ["--seed", "2"]
    assert sum("--seed" in job for job in jobs) == 2 * 64  # seed 0 keeps the script's default
    # three seeds of grid row 1 (val 0.5, 0.6, 0.7) against one seed of row 2 (0.65): the mean decides
    first, second = (reproduce.run_dir(str(tmp_path), reproduce.grid()[i][-1]) for i in (0, 1))
    for k, acc in enumerate([0.5, 0.6, 0.7]):
        fake_result(first + (f"_s{k}" if k else ""), acc)
    fake_result(second, 0.65)
    assert reproduce.best_grid_run(str(tmp_path)) == second
    rows = table_rows("\n".join(report.grid_table(str(tmp_path), second, "ours")), "2. The 24")
    assert rows[0][6:8] == ["60.00 ± 10.00 (n=3)", "50.00 ± 10.00 (n=3)"] and rows[1][6] == "**65.00**"
    assert rows[2][9] == "missing"
    fake_result(first + "_s2", 0.7, status="diverged")
    assert report.grid_table(str(tmp_path), second, "ours")[4].count("completed ×2, diverged ×1") == 1


# ---------------------------------------------------------------------------------------- the GPU check (the CUDA tests skip without a GPU)

@CUDA
@pytest.mark.parametrize("check", cuda_checks.CHECKS, ids=lambda check: check.__name__)
def test_cuda(check, tmp_path):
    """bf16 + channels_last, --compile, landscape vs CPU, probe, resume, CUDA checkpoints on the CPU."""
    check(torch.device("cuda"), str(tmp_path))


@SLOW
def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    data = write_fake_cifar(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run", data, str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == sorted(["summary.md", "summary.json", "env.txt", "cuda_checks.log", "steps.log",
                                              "throughput.jsonl", "default_curves.png", "surface_3d.png"])
    summary = read_json(out / "summary.json")
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 10, summary["steps"]
    assert summary["cuda_checks"] == f"{len(cuda_checks.CHECKS)} passed, 0 failed"
    assert {(r["arch"], r["pipeline"]) for r in summary["throughput"]} == {
        (arch, pipeline) for arch in ("light", "standard") for pipeline in ("ours", "naive")}
    assert all(r["tflop_per_s"] > 0 and r["mfu_percent"] is None for r in summary["throughput"])  # no peak on a CPU
    assert all(r["status"] == "completed" and r["test_acc_at_best_val"] is not None for r in summary["runs"].values())
    assert summary["surface"]["status"] == "complete" and summary["surface"]["torchrun_equals_single"] is True


# ---------------------------------------------------------------------------------------- nothing lost or mixed up

def test_overwrite_clears_the_old_run_before_anything_else(fake_data, tmp_path):
    args = [*TINY, "--data-dir", fake_data, "--epochs", "1", "--out", str(tmp_path)]
    common.train(parse(args))
    dies = run_cli([*TINY, "--data-dir", str(tmp_path / "absent"), "--epochs", "1", "--out", str(tmp_path),
                    "--overwrite"])  # the new run stops before its first step
    assert dies.returncode == 2 and "Traceback" not in dies.stderr
    assert [n for n in common.RUN_FILES if os.path.exists(tmp_path / n)] == []  # the old run's gone, nothing new
    proc = run_cli([*args, "--resume"])  # nothing of the old run can be resumed
    assert proc.returncode == 2 and "last.pt does not exist" in proc.stderr


def test_refused_landscape_resume_changes_nothing(checkpoints, fake_data, tmp_path):
    args = ["--ckpt", checkpoints[0], "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "50", "--data-dir", fake_data,
            "--no-download", "--device", "cpu", "--out", str(tmp_path)]
    assert landscape.main(args) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("directions.pt", "surface.npz", "surface.json")}
    assert landscape.main([*args, "--seed", "3", "--resume"]) == 2  # other directions: refused
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items())


def test_report_refuses_a_folder_without_runs(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "task2", "report.py"),
                           str(tmp_path / "absent")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "holds no runs" in proc.stderr and not (tmp_path / "absent").exists()


RUN_ALL = os.path.join(ROOT, "run_all.sh")


def run_all(*args, cwd=ROOT, **kwargs):
    return subprocess.run(["bash", RUN_ALL, "--no-eta", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHON": sys.executable}, **kwargs)


def test_a_second_run_all_on_the_same_out_is_refused(tmp_path):
    """Two pipelines on one --out used to share their job files and both report 'no failures' after running
    nothing; the second now names the first and exits 2."""
    import fcntl
    out = tmp_path / "out"
    fake_result(out / "runs" / "r", 0.5)
    with open(out / ".run_all.lock", "a+") as held:  # as the first run_all.sh holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        proc = run_all("--profile", "smoke", "--out", str(out), "--phase", "4")
    assert proc.returncode == 2 and "in use by another run_all.sh (pid 4242)" in proc.stderr
    assert not (out / "tables.md").exists()
    assert run_all("--profile", "smoke", "--out", str(out), "--phase", "4").returncode == 0  # free again


def test_relative_out_is_the_users_and_an_empty_one_never_touches_readme(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    try:
        proc = run_all("--profile", "smoke", "--out", "typo", "--phase", "4", "--update-readme", cwd=tmp_path)
        assert proc.returncode == 2 and "holds no runs" in proc.stderr
        assert not (tmp_path / "typo").exists() and not os.path.exists(os.path.join(ROOT, "typo"))
        fake_result(tmp_path / "rel" / "runs" / "r", 0.5, status="interrupted")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "task2", "report.py"),
                               str(tmp_path / "rel"), "--update-readme"], capture_output=True, text=True)
        assert proc.returncode == 2 and "holds no finished run" in proc.stderr
        proc = run_all("--profile", "smoke", "--out", "rel", "--phase", "4", cwd=tmp_path)
        assert proc.returncode == 0 and (tmp_path / "rel" / "tables.md").exists()  # where the user stands
    finally:
        assert open(os.path.join(ROOT, "README.md")).read() == readme
        with open(os.path.join(ROOT, "README.md"), "w") as f:
            f.write(readme)


def process_with(text):
    """Pids of the processes whose command line contains `text`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@SLOW
def test_sigterm_to_run_all_stops_its_job_runner_too(tmp_path):
    data, out = write_fake_cifar(tmp_path / "data"), tmp_path / "out"
    proc = subprocess.Popen(["bash", RUN_ALL, "--no-eta", "--profile", "smoke", "--data-dir", data, "--out", str(out),
                             "--phase", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    for line in proc.stdout:  # wait until a job is training, however slow the machine
        if line.startswith("[2/"):
            break
    proc.send_signal(signal.SIGTERM)  # to the bash process alone, as `kill PID` does
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    deadline = time.time() + 30
    while process_with(str(out)) and time.time() < deadline:
        time.sleep(0.5)
    assert not process_with(str(out)), "a job runner outlived run_all.sh"


def test_a_surface_is_complete_only_with_its_figures_and_for_its_checkpoint(checkpoints, fake_data, tmp_path):
    out, ckpt = tmp_path / "surface", tmp_path / "ckpt" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(checkpoints[0], ckpt)
    job = [LANDSCAPE, "--ckpt", str(ckpt), "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "50", "--data-dir",
           fake_data, "--no-download", "--device", "cpu", "--out", str(out)]
    assert landscape.main(job[1:]) == 0
    info = read_json(out / "surface.json")
    assert info["figures"] == ["contour.png", "heatmap.png", "surface_3d.png"]
    assert info["settings"]["ckpt_sha256"] == common.file_digest(str(ckpt))
    assert reproduce.job_state(job[0], job[1:]) == "done"
    os.remove(out / "heatmap.png")  # killed after the arrays, before the figures
    assert reproduce.job_state(job[0], job[1:]) == ["--resume"]
    shutil.copy(checkpoints[1], ckpt)  # the run was trained again: its surface is stale
    assert reproduce.job_state(job[0], job[1:]) == ["--overwrite"]
    (tmp_path / "jobs").write_text(shlex.join(job) + "\n")
    assert reproduce.run_jobs(str(tmp_path / "jobs")) == [] and reproduce.job_state(job[0], job[1:]) == "done"
    for edited in (["--n-items", "40"], ["--x", "-1:1:5"], ["--hessian"], ["--hessian-coords", "filter"]):
        assert reproduce.job_state(job[0], [*job[1:], *edited]) == ["--overwrite"], edited  # an edited profile
    with np.load(out / "surface.npz") as s:
        again = s["loss"]
    assert landscape.main([*job[1:-2], "--ckpt", checkpoints[1], "--out", str(tmp_path / "b")]) == 0
    with np.load(tmp_path / "b" / "surface.npz") as s:
        assert np.array_equal(again, s["loss"])  # recomputed for the new checkpoint
    with pytest.raises(SystemExit) as e:  # one point on an axis is no surface: refused before any work
        landscape.main([*job[1:-2], "--y", "0:0:1", "--out", str(tmp_path / "flat")])
    assert e.value.code == 2 and not (tmp_path / "flat").exists()


def test_an_overwrite_killed_after_its_directions_leaves_no_complete_surface(checkpoints, fake_data, tmp_path,
                                                                            monkeypatch, capsys):
    """--overwrite --seed 1 killed just after directions.pt once left the seed-0 surface.json saying complete;
    a truncated surface.json or surface.npz is one line on --resume and --replot."""
    out = tmp_path / "surface"
    job = ["--ckpt", checkpoints[0], "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "50", "--data-dir", fake_data,
           "--no-download", "--device", "cpu", "--out", str(out)]
    assert landscape.main(job) == 0
    with monkeypatch.context() as m:
        m.setattr(landscape, "SurfaceFiles", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            landscape.main([*job, "--overwrite", "--seed", "1"])
    assert (out / "directions.pt").exists() and not (out / "surface.json").exists()
    assert landscape.main([*job, "--overwrite"]) == 0
    npz = (out / "surface.npz").read_bytes()
    (out / "surface.npz").write_bytes(npz[:100])
    assert landscape.main([*job, "--resume"]) == 2 and landscape.main(["--replot", str(out)]) == 2
    (out / "surface.json").write_text('{"status": "compl')
    assert landscape.main([*job, "--resume"]) == 2 and landscape.main(["--replot", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "surface.npz is not a readable .npz" in err and "not valid JSON" in err


def test_replot_redraws_a_complete_surface_without_its_checkpoint(checkpoints, fake_data, tmp_path, capsys):
    out = tmp_path / "surface"
    assert landscape.main(["--ckpt", checkpoints[0], "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "50",
                           "--data-dir", fake_data, "--no-download", "--device", "cpu", "--out", str(out)]) == 0
    before, arrays = read_json(out / "surface.json"), (out / "surface.npz").read_bytes()
    os.remove(out / "surface_3d.png")
    assert landscape.main(["--replot", str(out), "--zmax", "1.5"]) == 0
    assert (out / "surface_3d.png").exists() and (out / "surface.npz").read_bytes() == arrays
    assert read_json(out / "surface.json") == before  # same figures listed, nothing else touched
    capsys.readouterr()
    assert landscape.main(["--replot", str(tmp_path / "nothing")]) == 2
    assert "no surface.json there" in capsys.readouterr().err.strip().splitlines()[-1]
    partial = dict(before, status="partial")
    common.write_json(str(out / "surface.json"), partial)
    assert landscape.main(["--replot", str(out)]) == 2
    assert "the surface is partial" in capsys.readouterr().err
    assert read_json(out / "surface.json") == partial and not (out / ".lock").exists()


def test_array_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = str(tmp_path / "probe.npz")
    common.save_npz(path, a=np.arange(3))

    def killed_midway(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\\x03")  # a few bytes, then the process dies
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        common.save_npz(path, a=np.arange(5))
    monkeypatch.undo()
    with np.load(path) as old:
        assert old["a"].tolist() == [0, 1, 2]  # the previous file, whole
    assert os.listdir(tmp_path) == ["probe.npz"]  # and no temporary left behind


def test_bn_analysis_names_its_columns_and_needs_two_models(fake_data, tmp_path, capsys):
    runs = [known_run("vgg_a_bn", 0.1, [3, 2, 1, 1], [0, 0.5, 0.5], [0, 8, 8], [0, 1, 3]),
            known_run("vgg_a", 0.1, [3, 2, 2, 1], [100, 1, 3], [100, 4, 6], [1000, 10, 30])]
    header = bn_analysis.claims_table(runs, dict(opt="sgd")).splitlines()[2]
    assert "| vgg_a_bn (baseline) |" in header and "without BN" not in header
    for models in (["vgg_a"], ["vgg_a", "vgg_a"]):
        with pytest.raises(SystemExit) as e:
            bn_analysis.parse_args(["--models", *models, "--data-dir", fake_data, "--out", str(tmp_path / "bn")])
        assert e.value.code == 2 and "two or more different models" in capsys.readouterr().err
    assert not (tmp_path / "bn").exists()


@pytest.mark.parametrize("mistake, flags, message", [
    ("infinite width", ["--width", "inf"], "--width inf: out of range"),
    ("lr beyond fp32", ["--lr", "1e300"], "--lr 1e+300: out of range"),
    ("--out is a file", ["--out", "FILE"], "is a file, not a folder"),
    ("labels outside 0-9", ["--data-dir", "BADLABELS"], "labels range from 0 to 12"),
    ("BN with one image per batch", ["--model", "vgg_a_bn", "--batch-size", "1"],
     "BatchNorm needs batches of at least 2"),
])
def test_user_mistakes_are_one_line_and_write_nothing(fake_data, tmp_path, mistake, flags, message):
    (tmp_path / "FILE").write_text("not a folder")
    bad = write_fake_cifar(tmp_path / "bad")
    with open(os.path.join(bad, common.CIFAR10_FOLDER, "data_batch_1"), "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"][0] = 12
    with open(os.path.join(bad, common.CIFAR10_FOLDER, "data_batch_1"), "wb") as f:
        pickle.dump(batch, f)
    flags = [{"FILE": str(tmp_path / "FILE"), "BADLABELS": bad}.get(f, f) for f in flags]
    out = ["--out", str(tmp_path / "run")] if "--out" not in flags else []
    proc = run_cli([*TINY, "--data-dir", fake_data, "--epochs", "1", *out, *flags])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists(), mistake  # nothing written
    assert (tmp_path / "FILE").read_text() == "not a folder"


def test_other_missing_files_are_one_line(checkpoints, fake_data, tmp_path, capsys):
    assert reproduce.main(["jobs", str(tmp_path / "no_such_jobs")]) == 2
    assert "no such job file" in capsys.readouterr().err
    assert landscape.main(["--ckpt", checkpoints[0], "--x", "0:1:2", "--dir-file", str(tmp_path / "none.pt"),
                           "--data-dir", fake_data, "--no-download", "--out", str(tmp_path / "s")]) == 2
    assert "--dir-file" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_resume_keeps_the_saved_data_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = parse(["--device", "cpu", "--data-dir", "data", "--out", str(out), "--resume"])
    common.write_json(str(out / "config.json"), dict(cfg, data_dir="/the/saved/data"))
    assert common.resume_config(cfg, ["--resume"])["data_dir"] == "/the/saved/data"
    assert common.resume_config(cfg, ["--resume", "--data-dir=data"])["data_dir"] == "data"  # given again: wins


def test_a_profile_rerun_on_the_committed_results_trains_and_computes_nothing():
    """Every committed run, BN-analysis run and surface is recognized as finished by the job runner, whatever
    precision --precision auto resolves to on this machine and although the checkpoints are not committed."""
    for profile, out in (("cpu", "results/cpu"), ("cpu-full", "results/cpu-full")):
        out = os.path.join(ROOT, out)
        for phase in reproduce.PHASES:
            for script, *args in reproduce.plan(phase, profile, out, "data"):
                folder = reproduce.option(args, "--out")
                if not os.path.exists(os.path.join(folder, "surface.json" if script.endswith("landscape.py")
                                                   else "result.json")):
                    continue  # a run or surface the profile has not made yet
                if script.endswith("bn_analysis.py"):
                    assert bn_analysis.analysis_finished(args), folder
                    continue
                if folder.endswith(reproduce.RETRAIN) and "--overwrite" in args:
                    continue  # trained again on purpose: a surface that reads its lost best.pt is not finished
                assert reproduce.job_state(script, args) == "done", (profile, script, folder)


def test_full_scale_profile_seeds_the_bn_pair_and_reports_its_paired_gain(tmp_path):
    """cpu-full: every report row once, then seeds 1 and 2 of VGG-A and VGG-A + BN with Adam, pair by pair; the
    report pairs them by seed (an unfinished seed counts nowhere) and puts each run's convergence epoch beside
    the report's."""
    outs = [job[-1] for job in reproduce.plan("train", "cpu-full", str(tmp_path), "data")
            if not isinstance(job, reproduce.FollowingJob) and os.path.dirname(job[-1]) == str(tmp_path / "runs")]
    names = [os.path.basename(o) for o in outs]
    assert names[7:] == ["t1_light_leaky_relu_sgd_fast_s1", "t2_vgg_a_adam_s1", "t2_vgg_a_bn_adam_s1",
                         "t1_light_leaky_relu_sgd_fast_s2", "t2_vgg_a_adam_s2", "t2_vgg_a_bn_adam_s2"]
    assert "t2_vgg_a_res_bn_sgd" in names[:7] and len(set(names)) == len(names)
    runs, jobs = str(tmp_path / "runs"), {job["name"]: job for job in reproduce.FULL_SCALE_JOBS}
    for seed, (plain, bn) in enumerate([(0.80, 0.86), (0.78, 0.85), (0.79, 0.50)]):
        for name, acc in (("t2_vgg_a_adam", plain), ("t2_vgg_a_bn_adam", bn)):
            fake_result(os.path.join(runs, reproduce.seed_name(name, seed)), acc + 0.1,
                        status="interrupted" if seed == 2 and "bn" in name else "completed",
                        **reproduce.full_scale_config(jobs[name], seed))
    smoke = dict(reproduce.full_scale_config(jobs["t2_vgg_a_sgd"], 0), width=0.125, subset=200)
    fake_result(os.path.join(runs, "t2_vgg_a_sgd"), 0.3, **smoke)  # a smoke run in the cpu-full folder
    os.makedirs(tmp_path / "figures" / "curves")
    text = "\n".join(report.full_scale_sections(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    sgd_row = next(line for line in text.splitlines() if line.startswith("| t2_vgg_a_sgd "))
    assert "| – | – | – | completed; seed 0: other settings (subset, width), not counted |" in sgd_row
    assert "+6.50 pp ± 0.71 (sample std over 2 seeds); seed 0: +6.00, seed 1: +7.00." in text
    plain_row = next(line for line in text.splitlines() if line.startswith("| [t2_vgg_a_adam]"))
    assert "79.00 ± 1.00 (n=3)" in plain_row and "| 20 / 1.0 ± 0.0 (n=3) |" in plain_row
    bn_row = next(line for line in text.splitlines() if line.startswith("| [t2_vgg_a_bn_adam]"))
    assert "85.50 ± 0.71 (n=2)" in bn_row and "completed ×2, interrupted ×1" in bn_row


def test_light_grid_stands_beside_the_report_with_its_three_comparisons(tmp_path):
    """#31: five grid runs under grid/ (the sixth is the headline job), the NLL rows filled from the 1-epoch
    ce/nll pair's weights_sha256, and the report's three comparisons, each flagged when it is smaller than the
    headline configuration's seed spread."""
    grid_jobs = [job for job in reproduce.plan("train", "cpu-full", str(tmp_path), "data")
                 if os.path.dirname(job[-1]) == str(tmp_path / "grid")]
    assert len(grid_jobs) == 7 and not any("--lr" in job for job in grid_jobs)
    assert [job[-1] for job in grid_jobs if "--no-test" in job] == [
        str(tmp_path / "grid" / reproduce.NLL_CHECK[loss]) for loss in ("ce", "nll")]
    by_name = {job["name"]: job for job in reproduce.FULL_SCALE_JOBS}
    accs = {("relu", "adam"): 0.90, ("relu", "sgd"): 0.982, ("leaky_relu", "adam"): 0.92, ("tanh", "adam"): 0.88,
            ("tanh", "sgd"): 0.96}
    for (act, opt), acc in accs.items():
        job = by_name[reproduce.light_grid_name(act, opt)]
        fake_result(str(tmp_path / "grid" / job["name"]), acc, **reproduce.full_scale_config(job, 0))
    headline = by_name[reproduce.light_grid_name("leaky_relu", "sgd")]
    for seed, acc in enumerate([0.99, 0.985, 0.995]):  # test 89.0, 88.5, 89.5: a spread of 1.00 pp
        fake_result(str(tmp_path / "runs" / reproduce.seed_name(headline["name"], seed)), acc,
                    **reproduce.full_scale_config(headline, seed))
    for loss, digest in (("ce", "ab" * 32), ("nll", "ab" * 32)):
        folder = str(tmp_path / "grid" / reproduce.NLL_CHECK[loss])
        fake_result(folder, 0.5, **reproduce.full_scale_config(by_name[reproduce.NLL_CHECK[loss]], 0))
        common.write_json(os.path.join(folder, "result.json"), dict(
            common.load_json(os.path.join(folder, "result.json")), weights_sha256=digest))
    text = "\n".join(report.light_grid_table(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    rows = {tuple(line.split(" | ")[1:4]): line for line in text.splitlines() if line[:3] in ("| 1", "| 2")}
    assert len(rows) == 12 and "| 88.64 | 88.20 | -0.44 | 98.20 |" in rows["relu", "ce", "sgd"]
    assert "| 89.08 | 89.00 | -0.08 | 99.00 |" in rows["leaky_relu", "ce", "sgd"]  # the headline job, seed 0
    assert "weights bit-identical to t1_light_leaky_relu_ce_sgd_fast_1epoch" in rows["tanh", "nll", "adam"]
    summary = report.light_grid_summary(str(tmp_path), reproduce.FULL_SCALE_JOBS)
    assert "6 of 6 configurations finished" in summary and "seed spread of the headline configuration: 1.00 pp " \
        "over 3 seeds (test 89.00, 88.50, 89.50 %" in summary
    assert ("with sgd, the best activation is leaky_relu (+0.80 pp over relu (within the seed spread); the "
            "report's: leaky_relu), tanh minus the others' mean -2.60 pp (the report's -3.10)") in summary
    assert "with adam, the best activation is leaky_relu (+2.00 pp over relu; " in summary
    fake_result(str(tmp_path / "runs" / reproduce.seed_name(headline["name"], 2)), 0.99,  # seed 2 = seed 0: spread 0
                **reproduce.full_scale_config(headline, 2))
    os.remove(tmp_path / "runs" / reproduce.seed_name(headline["name"], 1) / "result.json")
    assert "seed spread of the headline configuration: 0.00 pp over 2 seeds (test 89.00, 89.00 %" in \
        report.light_grid_summary(str(tmp_path), reproduce.FULL_SCALE_JOBS)
    assert "SGD − Adam with tanh +8.00 pp (the report's +4.32)" in summary
    common.write_json(os.path.join(folder, "result.json"), dict(common.load_json(os.path.join(folder, "result.json")),
                                                                weights_sha256="cd" * 32))
    assert "end 1 epoch with different weights" in report.light_grid_summary(str(tmp_path), reproduce.FULL_SCALE_JOBS)


def test_fast_recipe_tries_come_first_never_read_the_test_set_and_say_what_differs(tmp_path):
    """cpu-full: the recipe search's tries run before the headline job, under tries/, the proxies with
    --no-test; the tries table names each try's settings beside the proxy's (or the headline job's) and the
    proxy's seed noise."""
    jobs = reproduce.plan("train", "cpu-full", str(tmp_path), "data")
    tries = [job for job in jobs if os.path.dirname(job[-1]) == str(tmp_path / "tries")]
    assert jobs[:len(tries)] == tries and len(tries) == len(reproduce.FAST_TRIES)
    proxies = [job for job in tries if "--subset" in job]  # a proxy never reads the test set, a full-scale try once
    assert proxies and all(("--no-test" in job) == (job in proxies) for job in tries)
    by_name = {job["name"]: job for job in reproduce.FULL_SCALE_JOBS}
    for name, acc, seed in (("proxy_base", 0.70, 0), ("proxy_zero_init", 0.72, 0), ("proxy_base_s1", 0.69, 1),
                            ("proxy_ls0.2", 0.705, 0), ("proxy_ls0.2_s1", 0.71, 1), ("proxy_adam_lr1e-3", 0.75, 0),
                            ("proxy_adam_lr1e-4", 0.60, 0)):
        fake_result(str(tmp_path / "tries" / name), acc, **reproduce.full_scale_config(by_name[name], seed))
    text = "\n".join(report.tries_table(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| zero_init_residual True | completed | 72.00 |" in rows["[proxy_zero_init](tries/proxy_zero_init)"]
    assert "| (the proxy) | completed | 70.00 |" in rows["[proxy_base](tries/proxy_base)"]
    assert "| seed 1 | completed | 69.00 |" in rows["[proxy_base_s1](tries/proxy_base_s1)"]
    assert "| missing |" in rows["proxy_ema"] and "| missing |" in rows["t1_light_leaky_relu_sgd_fast"]
    assert "proxy_base 70.00 % (seed 0), proxy_base_s1 69.00 % (seed 1): 1.00 pp from lowest to highest. " in text
    fake_result(str(tmp_path / "tries" / "proxy_base_s2"), 0.695, **reproduce.full_scale_config(by_name["proxy_base"], 2))
    text = "\n".join(report.tries_table(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    assert ("proxy_base 70.00 % (seed 0), proxy_base_s1 69.00 % (seed 1), proxy_base_s2 69.50 % (seed 2): 1.00 pp "
            "from lowest to highest, sample std 0.50 pp. A gain smaller than that is a tie, and 3 seeds") in text
    assert "At full scale" not in text  # no headline run yet
    fake_result(str(tmp_path / "runs" / reproduce.HEADLINE_NAME), 0.88,
                **reproduce.full_scale_config(by_name[reproduce.HEADLINE_NAME], 0))
    fake_result(str(tmp_path / "tries" / "t1_light_leaky_relu_sgd_fast_lr0.2"), 0.1, status="diverged",
                **reproduce.full_scale_config(by_name["t1_light_leaky_relu_sgd_fast_lr0.2"], 0))
    text = "\n".join(report.tries_table(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    assert ("At full scale (one seed each), validation accuracy beside the headline run's 88.00 % (test 78.00 % in "
            "0:01): t1_light_leaky_relu_sgd_fast_lr0.2 10.00 % (-78.00 pp, diverged; test 0.00 % in 0:01).") in text
    ls = str(tmp_path / "tries" / "t1_light_leaky_relu_sgd_fast_ls0.2")  # #29's hour: the TTA and the wall time
    fake_result(ls, 0.9, **reproduce.full_scale_config(by_name["t1_light_leaky_relu_sgd_fast_ls0.2"], 0))
    result = common.load_json(os.path.join(ls, "result.json"))
    common.write_json(os.path.join(ls, "result.json"), dict(result, tta=dict(test_acc_at_best_val=0.81),
                                                           wall_seconds=2971.0))
    before_tta = {k: v for k, v in reproduce.full_scale_config(by_name["t1_light_leaky_relu_sgd_fast_ep18"], 0).items()
                  if k != "tta"}  # the recipe before 30 epochs, run before --tta existed
    fake_result(str(tmp_path / "tries" / "t1_light_leaky_relu_sgd_fast_ep18"), 0.87, **before_tta)
    text = "\n".join(report.tries_table(str(tmp_path), reproduce.FULL_SCALE_JOBS))
    assert "sgd_fast_ls0.2 90.00 % (+2.00 pp, completed; test 80.00 % (flip TTA 81.00 %) in 49:31)" in text
    assert "| batch_size 256, epochs 18, tta none | completed | 87.00 |" in text  # the headline: flip TTA, batch 128
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "Best proxy by validation accuracy: proxy_zero_init 72.00 %" in text  # Adam's proxies apart:
    adam_lr = common.RECIPES["task1"]["fast"]["lr"].values["adam"]
    verdict = {1e-3: "the best by 15.00 pp over 0.0001", 1e-4: "NOT the best (0.001 is by 15.00 pp over 0.0001)"}.get(
        adam_lr, "not tried")
    assert ("Adam's peak lr for the light grid (proxies, one seed each): 0.0001 60.00 %, 0.001 75.00 %; the fast "
            f"recipe gives Adam {adam_lr:g}: {verdict}.") in text
    # label smoothing at seeds 0 and 1, each against proxy_base at its own seed; zero-init has one seed
    assert ("Paired by seed, validation accuracy minus the recipe as the proxies ran it: label_smoothing 0.2 +1.25 ± 1.06 pp "
            "(n=2: seed 0 +0.50, seed 1 +2.00).") in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\n")
    report.update_readme(str(readme), text + "\n", str(tmp_path))
    brief = readme.read_text()
    assert f"11 of {len(tries)} tries finished ([every try](./tables.md))" in brief and "| [proxy_base]" not in brief


def fake_surface(folder, ckpt, status="complete"):
    """A landscape folder as landscape.py leaves it (surface.json naming its checkpoint, one figure)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "contour.png"), "w").close()
    common.write_json(os.path.join(folder, "surface.json"), dict(status=status, figures=["contour.png"],
                                                                 settings=dict(ckpt=ckpt)))


def test_full_scale_surfaces_follow_their_training_job_and_a_lost_checkpoint_is_retrained(tmp_path):
    """cpu-full draws the SGD runs' surfaces from seed 0's best.pt right after it trains (indented lines, dealt
    out with their job); a finished run whose best.pt is gone (a new sitting) is trained again into
    <run>_retrain for its unfinished surfaces, afresh when the retrain's best.pt is gone too; complete surfaces
    of a gone checkpoint stay as drawn, and an unfinished one without its checkpoint is refused."""
    out, job = str(tmp_path), next(j for j in reproduce.FULL_SCALE_JOBS if j["name"] == "t2_vgg_a_bn_sgd")
    run = reproduce.run_dir(out, job["name"])
    lines = lambda: [j for j in reproduce.plan("train", "cpu-full", out, "data") if "vgg_a_bn_sgd" in j[-1]]  # noqa
    first = lines()
    assert [type(j) is reproduce.FollowingJob for j in first] == [False, True, True, True]
    assert all(reproduce.option(j, "--ckpt") == f"{run}/best.pt" for j in first[1:])
    assert ["--x", "-1:1:21", "--y", "-1:1:21", "--n-items", "2000"] == first[1][first[1].index("--x"):][:6]
    assert "train" == reproduce.option(first[2], "--bn-mode") and "filter" == reproduce.option(first[3],
                                                                                             "--hessian-coords")
    assert reproduce.job_state(first[1][0], first[1][1:]).startswith("refused: its checkpoint")
    printed = subprocess.run([sys.executable, "task2/reproduce.py", "plan", "train", "--profile", "cpu-full",
                              "--out", out], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    deal = next(line for line in open(os.path.join(ROOT, "run_all.sh")) if line.startswith("deal()"))
    dealt = [subprocess.run(["bash", "-c", f"{deal}\ndeal 2 {k}"], input=printed, capture_output=True, text=True,
                            check=True).stdout.splitlines() for k in (0, 1)]
    holder = next(d for d in dealt if any(line.endswith(run) for line in d))
    at = next(i for i, line in enumerate(holder) if line.endswith(run))
    assert [line.endswith(f) for line, f in zip(holder[at + 1:], ("vgg_a_bn_sgd", "bntrain", "hessian"))] == [True] * 3
    assert sorted(dealt[0] + dealt[1]) == sorted(printed.splitlines())
    fake_result(run, 0.8, **reproduce.full_scale_config(job, 0))  # finished, no best.pt: a new sitting
    retrain, *surfaces = lines()[1:]
    assert retrain[-1] == run + "_retrain" and "--overwrite" not in retrain
    assert all(reproduce.option(j, "--ckpt") == f"{run}_retrain/best.pt" for j in surfaces)
    fake_result(run + "_retrain", 0.8, **reproduce.full_scale_config(job, 0))  # and that one's best.pt gone too
    again = lines()[1]
    assert again[-3:] == ["--overwrite", "--out", run + "_retrain"] and reproduce.job_state(again[0], again[1:]) == []
    for j in surfaces:
        fake_surface(reproduce.option(j, "--out"), reproduce.option(j, "--ckpt"))
    assert "--overwrite" not in lines()[1] and all(reproduce.job_state(j[0], j[1:]) == "done" for j in lines())


def test_task1_figures_follow_their_runs_and_the_path_reads_both_checkpoints(tmp_path):
    """#29's Task 1 figures in cpu-full: the headline model's filters and surface right after its seed 1 (trained in
    the sitting that draws them), the light Adam run's surface right after that run, and the SGD-to-Adam path after
    the later of the two (never before either checkpoint's run); the path names the Adam run's checkpoint too
    ({best:NAME}), so when that one is gone the Adam run is retrained first, and the path reads the retrain."""
    out, by_name = str(tmp_path), {job["name"]: job for job in reproduce.FULL_SCALE_JOBS}
    headline = reproduce.run_dir(out, reproduce.seed_name(reproduce.HEADLINE_NAME, 1))  # seed 1: trained beside them
    adam = reproduce.run_dir(out, reproduce.light_grid_name("leaky_relu", "adam"), "grid")

    def after(run, n):
        jobs = reproduce.plan("train", "cpu-full", out, "data")
        at = next(i for i, j in enumerate(jobs) if j[-1] == run)
        assert all(type(j) is reproduce.FollowingJob for j in jobs[at + 1:at + 1 + n])
        return jobs[at + 1:at + 1 + n]
    filters, surface, filter_hessian, path = after(headline, 4)
    assert filters[0] == "task1/visualize.py" and reproduce.option(filters, "--ckpt") == f"{headline}/best.pt"
    assert surface[0] == "task2/landscape.py" and reproduce.option(surface, "--y") == "-1:1:21"
    assert reproduce.option(filter_hessian, "--hessian-coords") == "filter"
    assert path.count("--ckpt") == 1 and (reproduce.option(path, "--ckpt"), reproduce.option(path, "--interp")) == \
        (f"{headline}/best.pt", f"{adam}/best.pt")
    outs = [j[-1] for j in reproduce.plan("train", "cpu-full", out, "data")]
    assert outs.index(adam) < outs.index(headline) < outs.index(path[-1])
    adam_surface, _ = after(adam, 2)
    assert reproduce.option(adam_surface, "--ckpt") == f"{adam}/best.pt"
    fake_result(adam, 0.8, **reproduce.full_scale_config(by_name[reproduce.T1_ADAM_RUN], 0))  # its best.pt gone
    *_, retrain, path = after(headline, 5)
    assert retrain[-1] == adam + reproduce.RETRAIN and reproduce.option(path, "--interp") == \
        f"{adam}{reproduce.RETRAIN}/best.pt" and reproduce.option(path, "--ckpt") == f"{headline}/best.pt"
    folder = os.path.join(out, "landscapes", reproduce.T1_FILTERS)
    os.makedirs(folder)
    for name in ("filters.png", "feature_maps.png"):
        assert not reproduce.follower_complete(folder, "task1/visualize.py")
        open(os.path.join(folder, name), "wb").close()
    assert reproduce.follower_complete(folder, "task1/visualize.py")


def test_the_data_copys_cost_comes_from_the_airbench_record_beside_the_headline_run(tmp_path):
    """#29: README states airbench94's accuracy on our copy (bench/airbench_calibration.py's record) beside its
    published 94.01 % and the headline run; without the record it gives the command that measures it."""
    out = str(tmp_path)
    assert "not measured yet: `python bench/airbench_calibration.py --out " in report.data_copy_cost(out, None)
    common.write_json(os.path.join(out, report.AIRBENCH_FILE), dict(
        airbench="0.1.8", train_images=50000, test_acc=0.8981, test_acc_tta=0.9065, wall_seconds=5820.0,
        device="AMD EPYC, 2 cores", precision="bf16"))
    fake_result(os.path.join(out, "runs", reproduce.HEADLINE_NAME), 0.9725)  # test at best val: 87.25 %
    text = report.data_copy_cost(out, reproduce.read_result(reproduce.run_dir(out, reproduce.HEADLINE_NAME)))
    assert "50,000 training images" in text and "AMD EPYC, 2 cores; bf16, 1:37:00" in text
    assert ("89.81 % test without TTA, 90.65 % with its flip + translate TTA, -4.20 pp from its published 94.01 % on "
            "the original CIFAR-10; the headline run's 87.25 % (in 0:01) is -2.56 pp from it.") in text
    headline = dict(reproduce.read_result(reproduce.run_dir(out, reproduce.HEADLINE_NAME)),
                    tta=dict(test_acc_at_best_val=0.88), wall_seconds=2970.0)  # flip TTA beside, #29's hour
    assert ("the headline run's 87.25 % (in 49:30) is -2.56 pp from it, with flip TTA 88.00 % (-2.65 pp from its "
            "TTA).") in report.data_copy_cost(out, headline)


def test_task1_figures_appear_once_their_files_exist_sgd_beside_adam_on_one_scale(tmp_path, monkeypatch):
    out, drawn = str(tmp_path), []
    monkeypatch.setattr(report, "plot_surfaces_side_by_side", lambda *a, **k: drawn.append((a, k)))
    assert report.task1_figures(out) == []
    for name, top in (("t1_light_sgd", 40.0), ("t1_light_sgd_filter_hessian", 4.0), ("t1_light_adam", 900.0),
                      ("t1_light_adam_filter_hessian", 3.0)):
        folder = os.path.join(out, "landscapes", name)
        fake_surface(folder, "x/best.pt")
        common.write_json(os.path.join(folder, "surface.json"), dict(
            common.load_json(os.path.join(folder, "surface.json")), hessian=dict(top_eigenvalue=top, converged=True)))
        np.savez(os.path.join(folder, "surface.npz"), x=np.zeros(3), y=np.zeros(3), loss=np.ones((3, 3)))
    folder = os.path.join(out, "landscapes", reproduce.T1_INTERP)
    fake_surface(folder, "x/best.pt")
    np.savez(os.path.join(folder, "surface.npz"), x=np.array([-0.5, 0.0, 0.5, 1.0, 1.5]),
             loss=np.array([3.0, 0.1, 2.5, 0.2, 4.0]))
    text = "\n".join(report.task1_figures(out))
    assert ("top Hessian eigenvalue, raw / filter-normalized: SGD 40 / 4, Adam 900 / 3; Adam / SGD ×22.50 raw, "
            "×0.75 filter-normalized") in text
    assert "loss 0.1 at α = 0, 0.2 at α = 1, highest between them 2.5." in text and "filters.png" not in text
    (args, kwargs), = drawn
    assert args[1] == ["ResVGG16-light, SGD: top eigenvalue 40", "ResVGG16-light, Adam: top eigenvalue 900"]
    assert args[2].endswith(os.path.join("figures", "t1_sgd_vs_adam.png")) and kwargs["log"]


@pytest.mark.parametrize("seed", reproduce.ADAM_HESSIAN_SEEDS)
def test_the_adam_pairs_hessians_follow_each_hessian_seed_and_a_lost_checkpoint_retrains_that_seed(tmp_path, seed):
    """The Adam pair's raw and filter Hessians (#33) follow seeds 1 and 2 (a spread over seeds), each read its
    seed's best.pt into its seed's folders, and when that is gone retrain the seed (--seed k) into
    t2_vgg_a_bn_adam_s<k>_retrain, which the report then sets against it."""
    out, job = str(tmp_path), next(j for j in reproduce.FULL_SCALE_JOBS if j["name"] == "t2_vgg_a_bn_adam")
    run = reproduce.run_dir(out, f"t2_vgg_a_bn_adam_s{seed}")
    jobs = reproduce.plan("train", "cpu-full", out, "data")
    at = next(i for i, j in enumerate(jobs) if j[-1] == run)
    hessians = jobs[at + 1:at + 5]
    assert all(type(j) is reproduce.FollowingJob and reproduce.option(j, "--ckpt") == f"{run}/best.pt"
               for j in hessians) and not any(type(j) is reproduce.FollowingJob for j in jobs[at + 5:at + 6])
    assert [(reproduce.option(j, "--bn-mode"), reproduce.option(j, "--hessian-coords")) for j in hessians] == \
        [(None, "raw"), (None, "filter"), ("train", "raw"), ("train", "filter")]
    assert [os.path.basename(j[-1]) for j in hessians] == [f"vgg_a_bn_adam_s{seed}_hessian", f"vgg_a_bn_adam_s{seed}"
                                                           f"_filter_hessian", f"vgg_a_bn_adam_s{seed}_bntrain_hessian",
                                                           f"vgg_a_bn_adam_s{seed}_bntrain_filter_hessian"]
    assert not any(reproduce.option(j, "--ckpt") == f"{reproduce.run_dir(out, job['name'])}/best.pt" for j in jobs)
    fake_result(run, 0.85, **reproduce.full_scale_config(job, seed))  # finished, its best.pt gone
    jobs = reproduce.plan("train", "cpu-full", out, "data")
    retrain = jobs[next(i for i, j in enumerate(jobs) if j[-1] == run) + 1]
    assert retrain[-4:] == ["--seed", str(seed), "--out", run + "_retrain"]
    fake_result(run + "_retrain", 0.84, **reproduce.full_scale_config(job, seed))
    assert f"t2_vgg_a_bn_adam_s{seed} trained again" in "\n".join(report.retrain_lines(out, reproduce.FULL_SCALE_JOBS))


def test_an_eigenvalue_is_marked_unconverged_only_when_its_own_residual_missed_the_tolerance():
    """Lanczos' flag covers both extremes: a top eigenvalue whose Ritz residual is 2e-11 was marked 'not
    converged' because the most negative one (residual 1.3) was not; with several starts the flag stands."""
    h = dict(top_eigenvalue=136.4, bottom_eigenvalue=-5.2, residual_top=2.1e-11, residual_bottom=1.3, tol=1e-3,
             converged=False, repeats=1)
    assert report.hessian_cell(h, "top_eigenvalue") == "136.4"
    assert report.hessian_cell(h, "bottom_eigenvalue") == "-5.2 (not converged)"
    assert report.hessian_cell(dict(h, repeats=2), "top_eigenvalue") == "136.4 (not converged)"
    assert report.hessian_cell(dict(h, converged=None), "top_eigenvalue") == "136.4 (power iteration, unchecked)"


def fake_adam_hessians(out, seed, values):
    """One seed's six Adam-pair Hessian folders: values[(model, BN mode)] = (top, trace, stderr) in raw
    coordinates (VGG-A's top halved), a hundredth of them in filter coordinates."""
    for (name, mode), (top, trace, stderr) in values.items():
        for coords, scale in (("raw", 1.0), ("filter", 0.01)):
            folder = os.path.join(out, "landscapes", reproduce.adam_hessian_folder(name, mode, coords, seed))
            fake_surface(folder, f"{out}/runs/t2_{name}_s{seed}/best.pt")
            info = common.load_json(os.path.join(folder, "surface.json"))
            info.update(points=1, points_done=1, seconds=90.0,
                        hessian=dict(top_eigenvalue=top * scale / (2 if name == "vgg_a_adam" else 1), converged=True,
                                     coords=coords, seconds=80.0),
                        spectrum=dict(trace=dict(mean=trace * scale, std=0.0, stderr=[stderr * scale])))
            info["settings"].update(bn_mode=mode, n_items=256)
            common.write_json(os.path.join(folder, "surface.json"), info)
            np.savez(os.path.join(folder, "surface.npz"), x=np.zeros(1), loss=np.full(1, 0.5))


def test_the_adam_pairs_sharpness_sentence_sets_raw_beside_filter_coordinates(tmp_path):
    """README's sentence on the Adam pair (#33): top eigenvalue / trace (SE) of each network in both
    coordinates and BN's ratio to VGG-A; nothing until one seed's six Hessians are complete; the table stays in
    tables.md. Over two seeds: mean ± std, the mean of the per-seed ratios and which way every seed points."""
    out = str(tmp_path)
    fake_adam_hessians(out, 1, {("vgg_a_adam", "eval"): (200.0, 800.0, 4.0),
                                ("vgg_a_bn_adam", "eval"): (1000.0, 4000.0, 10.0),
                                ("vgg_a_bn_adam", "train"): (600.0, 2000.0, 8.0)})
    text = "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))
    assert ("in the parameters (raw): VGG-A 100 / 800 (SE 4); VGG-A + BN, BN eval 1000 / 4000 (SE 10), ×10.00 / ×5.00; "
            "VGG-A + BN, BN train 600 / 2000 (SE 8), ×6.00 / ×2.50. filter-normalized (D·H·D): VGG-A 1 / 8 (SE 0.04); "
            "VGG-A + BN, BN eval 10 / 40 (SE 0.1), ×10.00 / ×5.00;") in text and "(seed 1's checkpoints" in text
    brief = re.sub(rf"{re.escape(report.TABLES_ONLY[0])}.*?{re.escape(report.TABLES_ONLY[1])}\n+", "", text,
                   flags=re.S)
    assert "×10.00 / ×5.00" in brief and "| [vgg_a_adam_s1_hessian]" in text and "| [vgg_a_adam_s1_hessian]" not in brief
    fake_adam_hessians(out, 2, {("vgg_a_adam", "eval"): (300.0, 1200.0, 6.0),  # BN train's top: below VGG-A's here
                                ("vgg_a_bn_adam", "eval"): (1000.0, 4000.0, 10.0),
                                ("vgg_a_bn_adam", "train"): (100.0, 2000.0, 8.0)})
    text = "\n".join(report.adam_sharpness(out))
    assert ("(seeds 1, 2's checkpoints" in text and "in the parameters (raw): VGG-A 125 ± 35.36 (n=2) / 1000 ± 282.8 "
            "(n=2); VGG-A + BN, BN eval 1000 ± 0 (n=2) / 4000 ± 0 (n=2), ×8.33 / ×4.17 (top eigenvalue / trace: sharper "
            "at every seed / sharper at every seed); VGG-A + BN, BN train 350 ± 353.6 (n=2) / 2000 ± 0 (n=2), ×3.33 / "
            "×2.08 (top eigenvalue / trace: the seeds disagree / sharper at every seed). filter-normalized (D·H·D): "
            "VGG-A 1.25 ± 0.3536 (n=2)") in text
    for seed in reproduce.ADAM_HESSIAN_SEEDS:  # a seed with one Hessian unfinished counts nowhere
        os.remove(os.path.join(out, "landscapes", f"vgg_a_bn_adam_s{seed}_bntrain_filter_hessian", "surface.json"))
        assert "(seeds 1, 2's" not in "\n".join(report.adam_sharpness(out))
    assert report.adam_sharpness(out) == []


def test_full_scale_landscapes_table_quotes_each_surface_the_retrain_and_draws_one_scale(tmp_path, monkeypatch):
    """The report's cpu-full landscape section: a row per planned folder (loss range over the finite points, the
    top eigenvalue and its coordinates, wall time), the report's maxima beside, a retrain set against the
    committed run, and the three SGD surfaces drawn together once all exist."""
    out, drawn = str(tmp_path), []
    monkeypatch.setattr(report, "plot_bn_modes", lambda *a, **k: drawn.append(a))
    jobs = {job["name"]: job for job in reproduce.FULL_SCALE_JOBS}
    x = np.linspace(-1, 1, 3)
    for folder, top, coords in (("vgg_a_sgd", 250.0, "raw"), ("vgg_a_bn_sgd", 80.0, "raw"),
                                ("vgg_a_bn_sgd_bntrain", 60.0, "raw"), ("vgg_a_bn_sgd_filter_hessian", 3.0, "filter")):
        folder = os.path.join(out, "landscapes", folder)
        fake_surface(folder, f"{out}/runs/t2_vgg_a_bn_sgd/best.pt")
        info = common.load_json(os.path.join(folder, "surface.json"))
        info.update(points=9, points_done=9, seconds=120.0, hessian=dict(top_eigenvalue=top, converged=True,
                                                                           coords=coords, seconds=60.0))
        info["settings"].update(bn_mode="train" if "bntrain" in folder else "eval", n_items=2000)
        if coords == "filter":  # a Hessian job with --hessian-trace
            info["spectrum"] = dict(trace=dict(mean=41.5, std=0.0, stderr=[2.3], values=[41.5], probes=8))
        common.write_json(os.path.join(folder, "surface.json"), info)
        loss = np.full((3, 3), top)
        loss[0, 0], loss[1, 1] = np.inf, 0.5
        np.savez(os.path.join(folder, "surface.npz"), x=x, y=x, loss=loss)
    for name, acc in (("t2_vgg_a_sgd", 0.82), ("t2_vgg_a_sgd_retrain", 0.815)):
        fake_result(reproduce.run_dir(out, name), acc,  # fp32 pinned: "auto" resolves to bf16 on a bf16 CPU
                    **{**reproduce.full_scale_config(jobs["t2_vgg_a_sgd"], 0), "precision": "fp32"})
    text = "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))
    sgd_row = next(line for line in text.splitlines() if line.startswith("| [vgg_a_sgd]"))
    assert "| eval | 9/9 | 2000 | 0.5 | 250 | 250 | – | raw | 2:00 + Hessian 1:00 |" in sgd_row
    assert "| 3 | 41.5 (2.3) | filter |" in next(line for line in text.splitlines() if "filter_hessian]" in line)
    assert "2.0·10⁶" in text and "71.50 % (completed, fp32) vs 72.00 % committed (fp32): -0.50 pp." in text
    assert len(drawn) == 1 and "top eigenvalue 60" in drawn[0][4][2]
    assert ("VGG-A, SGD 0.5 to 250, top eigenvalue 250, 2:00 + Hessian 1:00; VGG-A + BN, SGD, BN eval 0.5 to 80, top "
            "eigenvalue 80 (filter-normalized 3), 2:00 + Hessian 1:00;") in text  # the report's numbers beside ours:
    assert "without BN is ×3.12 that with BN (eval), ×4.17 (train); the report's is ×100,000 (2,000,000 vs 20)" in text
    shutil.rmtree(os.path.join(out, "landscapes", "vgg_a_bn_sgd_bntrain"))
    text = "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))
    assert "[vgg_a_bn_sgd_bntrain]" not in text and "vgg_a_sgd_filter_hessian, vgg_a_bn_sgd_bntrain, " in text
    assert reproduce.T1_FILTERS not in text  # visualize.py's folder is no surface
    assert len(drawn) == 1
    fake_surface(os.path.join(out, "landscapes", "vgg_a_bn_sgd_bntrain"), "x.pt", status="partial")  # under way
    text = "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))
    assert "[vgg_a_bn_sgd_bntrain]" not in text and "vgg_a_sgd_filter_hessian, vgg_a_bn_sgd_bntrain, " in text
    epochs = [dict(epoch=1, train_loss=1.25, train_acc=0.5, val_loss=1.5, val_acc=0.45, img_per_s=300.0)]
    for name, speed in (("t2_vgg_a_sgd", 300.0), ("t2_vgg_a_sgd_retrain", 280.0)):  # a retrain bit for bit
        common.write_text(os.path.join(reproduce.run_dir(out, name), "metrics.jsonl"),
                          json.dumps(dict(epochs[0], img_per_s=speed)) + "\n")
    same = "-0.50 pp; all 1 epochs' training and validation loss and accuracy are the same numbers, bit for bit."
    assert same in "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))
    common.write_text(os.path.join(reproduce.run_dir(out, "t2_vgg_a_sgd_retrain"), "metrics.jsonl"),
                      json.dumps(dict(epochs[0], val_loss=1.5000001)) + "\n")
    assert same not in "\n".join(report.full_scale_landscapes(out, reproduce.FULL_SCALE_JOBS))


@pytest.mark.parametrize("flags", [["--hessian-tol", "inf"], ["--hessian-tol", "0"], ["--zmax", "nan"],
                                   ["--zmax", "-1"]])
def test_landscape_refuses_a_tolerance_or_clip_that_would_draw_or_converge_nothing(flags, tmp_path, capsys):
    """--hessian-tol inf once said 'converged' after one Lanczos iteration; --zmax nan drew figures without a
    curve. Both stop at parsing: exit 2, one line, nothing written."""
    with pytest.raises(SystemExit) as stop:
        landscape.parse_args(["--ckpt", str(tmp_path / "x.pt"), "--out", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2 and flags[0] in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_zero_step_budget_is_refused_not_ignored():
    """--steps 0 once trained the full epochs and recorded 'steps 0'."""
    with pytest.raises(common.UsageError, match="--steps 0"):
        parse(["--device", "cpu", "--steps", "0"])
    assert parse(["--device", "cpu", "--steps", "5"])["steps"] == 5 and parse(["--device", "cpu"])["steps"] is None


def test_no_committed_markdown_file_links_to_a_file_that_does_not_exist():
    """Every relative link of every markdown file in git (README, results' READMEs and tables) resolves."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT,
                            capture_output=True, text=True).stdout.split()
    if not listed:
        pytest.skip("not a git checkout")
    dead = []
    for name in listed:
        with open(os.path.join(ROOT, name)) as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # code blocks hold commands, not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+://|#|mailto:", target) and not os.path.exists(
                    os.path.join(ROOT, os.path.dirname(name), target.split("#")[0])):
                dead.append(f"{name}: {target}")
    assert len(listed) >= 5 and not dead, dead
