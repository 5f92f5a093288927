"""The shared core, in sections: constants · data · precision · models · losses and optimizers · settings ·
device, evaluation, RNG · files and checkpoints · run folder · the training loop · landscape core and gradient
probe · tables and figures. Scripts parse flags, call in
here and own their outputs. One training loop (`train`), one "model at θ + δ" evaluation (`evaluate_at`).
"""
import argparse
import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import socket
import statistics
import sys
import time
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# -- constants ---------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
VAL_SPLIT_SEED = 0  # the validation split is the same for every run, whatever --seed is

MODELS = ["resvgg16", "vgg16", "vgg_a", "vgg_a_bn", "vgg_a_res_bn"]
VGG_A_MODELS = ("vgg_a", "vgg_a_bn", "vgg_a_res_bn")  # Task 2
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
INITS = ["default", "xavier", "kaiming", "kaiming_all"]
NORMALIZATIONS = {  # input (mean, std) per channel
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "report": (CIFAR10_MEAN, (0.2023, 0.1994, 0.2010)),  # the report's Task 1 code
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the report's Task 2 code
}
FAST_WARMUP = 5 / 24  # share of the one-cycle schedule spent warming up, as in Myrtle's ResNet-9 (24 epochs, 5 up)
RESVGG16_ARCHS = {  # stage channels, hidden FC widths
    "standard": ([64, 128, 256, 512, 512], [4096, 4096]),
    "light": ([32, 64, 128, 256, 256], [1024, 512]),
}
RESVGG16_BLOCKS = [2, 2, 3, 3, 3]
VGG_A_STAGES = [[64], [128], [256, 256], [512, 512], [512, 512]]

LOSSES = ["ce", "nll", "mse"]
OPTIMIZERS = ["sgd", "adam", "adamw", "sgd_scratch"]
PRECISIONS = ["auto", "bf16", "fp32"]
TTA_KINDS = ["none", "flip"]
EVAL_BATCH = 1000
LOSS_CHECK_EVERY = 20  # steps between checks of the loss on the host (each check syncs a GPU)
PROGRESS_EVERY_S = 30.0
STUCK_LOSS_FALL = 1e-3  # a new lowest train loss must be this much (relative) below the old one to count
CONVERGED_FRACTION = 0.95  # convergence epoch: the first to reach this share of the best val accuracy
NORMS = ["filter", "layer", "none"]
RUN_FILES = ["config.json", "metrics.jsonl", "result.json", "best.pt", "last.pt", "curves.png"]
TRAJECTORY_FOLDER = "trajectory"  # --save-trajectory's snapshots inside a run folder


class DataError(Exception):
    """A problem with the dataset files; the scripts print it as one line, without a traceback."""


class UsageError(Exception):
    """A flag, folder or file the user got wrong; the scripts print it as one line, without a traceback."""


class CorruptFile(UsageError, ValueError):
    """A saved file cut short or garbled (a kill -9 mid-write by an older version, a full disk): one line,
    and still the ValueError that code reading an optional file catches."""


USER_ERRORS = (DataError, UsageError, OSError)  # OSError: a folder or file that cannot be read or written


def fail(error):
    """What every script's main does with a DataError or UsageError: one line on stderr, exit code 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


# -- data --------------------------------------------------------------------------------------

def add_precision_arg(parser):
    return add_settings(parser, names=("precision",), suppress=False)


def add_data_args(parser):
    """--data-dir, --no-download and --device: the flags every script that reads data shares (SETTINGS')."""
    return add_settings(parser, names=("data_dir", "no_download", "device"), suppress=False)


def _unpickle(path):
    hint = f"delete {os.path.dirname(path)} and rerun to download it again, or point --data-dir at a good copy"
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing; {hint}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}); {hint}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}; {hint}")
    # the original files have bytes keys; copies written from Python 3 may have str keys
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_batch(path):
    """One batch file -> (uint8 images [N, 3, 32, 32], int64 labels [N])."""
    batch = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}, found {sorted(batch)}; "
                        "this is not a CIFAR-10 python batch file")
    data = batch["data"]
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) != 2 or shape[1] != 3 * 32 * 32 or str(getattr(data, "dtype", "")) != "uint8":
        raise DataError(f"{path}: 'data' should be uint8 [N, 3072], found "
                        f"{getattr(data, 'dtype', type(data).__name__)} {list(shape)}")
    labels = torch.as_tensor(list(batch["labels"]), dtype=torch.int64)
    if labels.numel() != shape[0]:
        raise DataError(f"{path}: {shape[0]} images but {labels.numel()} labels")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise DataError(f"{path}: labels range from {int(labels.min())} to {int(labels.max())}; CIFAR-10 has 0 to 9")
    images = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)
    return images, labels


def load_cifar10(data_dir, download=True):
    """The whole dataset as uint8 tensors: dict(train_x, train_y, test_x, test_y, classes)."""
    folder = os.path.join(data_dir, CIFAR10_FOLDER)
    if not os.path.isdir(folder):
        if not download:
            raise DataError(f"{folder}: folder not found; drop --no-download to fetch CIFAR-10 there, "
                            "or point --data-dir / $CIFAR10_DIR at the folder holding cifar-10-batches-py/")
        from torchvision.datasets.utils import download_and_extract_archive
        print(f"downloading CIFAR-10 into {data_dir} ...", flush=True)
        try:
            download_and_extract_archive(CIFAR10_URL, data_dir, md5=CIFAR10_MD5, remove_finished=True)
        except Exception as e:  # any network or checksum failure becomes one readable line
            raise DataError(f"{folder}: download failed ({type(e).__name__}: {e}); "
                            "fetch cifar-10-python.tar.gz by hand and extract it into --data-dir") from None
    train = [_read_cifar_batch(os.path.join(folder, name)) for name in CIFAR10_TRAIN_FILES]
    test_x, test_y = _read_cifar_batch(os.path.join(folder, CIFAR10_TEST_FILE))
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("label_names", [])]
    return dict(train_x=torch.cat([x for x, _ in train]), train_y=torch.cat([y for _, y in train]),
                test_x=test_x, test_y=test_y, classes=classes or [str(i) for i in range(10)])


def split_train_val(x, y, n_val, subset=0):
    """Hold out n_val images (at most a tenth) with a fixed seed; `subset` keeps the first N of the rest."""
    n_val = min(n_val, len(y) // 10)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if subset:
        train_idx = train_idx[:subset]
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def augment(images, gen):
    """Random crop with 4 pixels of zero padding and a random horizontal flip, for a whole uint8 batch
    on its device. Random numbers come from the CPU generator `gen`, so every device sees the same ones."""
    (n, c, h, w), device = images.shape, images.device
    shifts = torch.randint(0, 9, (2, n), generator=gen).to(device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(device)
    padded = F.pad(images, (4, 4, 4, 4))
    rows = shifts[0, :, None] + torch.arange(h, device=device)
    cols = shifts[1, :, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reverses the column order
    return padded[torch.arange(n, device=device)[:, None, None, None],
                  torch.arange(c, device=device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _normalize(images, channels_last=False):
    """uint8 [N, 3, H, W] -> float in [0, 1]; each model standardizes its input itself (see Standardize)."""
    x = images.float() / 255
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# -- precision and memory format ---------------------------------------------------------------

def cpu_has_fast_bf16(cpuinfo="/proc/cpuinfo"):
    """oneDNN has bf16 kernels and the CPU computes bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm),
    read from /proc/cpuinfo. Elsewhere bf16 would be emulated, slower than fp32, so False."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except (OSError, RuntimeError, AttributeError):
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class Numerics:
    """How a model runs: precision 'bf16' (autocast: matmuls and convolutions in bf16, weights and the
    optimizer in fp32) or 'fp32', and memory format 'channels_last' or 'contiguous'. The device only
    decides what --precision auto resolves to (see numerics_for); no code path branches on the device."""

    def __init__(self, precision="fp32", memory_format="contiguous"):
        self.precision, self.memory_format = precision, memory_format
        self.channels_last = memory_format == "channels_last"

    def autocast(self, device):
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16" else \
            contextlib.nullcontext()

    def inputs(self, images):
        """uint8 images -> the model's float input in this memory format."""
        return _normalize(images, self.channels_last)

    def place(self, model, device):
        return model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)

    def as_dict(self):
        return dict(precision=self.precision, memory_format=self.memory_format)

    def __repr__(self):
        return f"{self.precision} + {self.memory_format}"


FP32 = Numerics()  # fp32, contiguous: the reference (the probe's default; old CPU runs; tests compare with it)


def numerics_for(precision, device):
    """--precision resolved on `device`: auto is bf16 where the device computes it fast (CUDA with bf16, a CPU
    with native bf16), else fp32. Always channels_last: bench/throughput.py measured it faster than contiguous
    in fp32 and in bf16 on the CPU (README, Performance), as it is for convolutions on CUDA's tensor cores."""
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        precision = "bf16" if fast else "fp32"
    return Numerics(precision, "channels_last")


def saved_numerics(cfg, device):
    """The numerics a run was made with: its config's, or for a config from before they were recorded, what
    the code did then (bf16 + channels_last on CUDA, fp32 on the CPU)."""
    if all(k in cfg for k in NUMERICS_KEYS):
        return Numerics(cfg["precision"], cfg["memory_format"])
    return Numerics("bf16", "channels_last") if device.type == "cuda" else FP32


# -- models ------------------------------------------------------------------------------------

def _scaled(n, width):
    return max(1, round(n * width))


def _activation(name, leaky_slope=0.01):
    """A factory of the activation module `name` (LeakyReLU with its negative slope)."""
    return functools.partial(nn.LeakyReLU, leaky_slope) if name == "leaky_relu" else ACTIVATIONS[name]


class Standardize(nn.Module):
    """The input standardization the model was trained with, as the model's first step, so whatever evaluates
    a checkpoint feeds it [0, 1] images. Its buffers are not saved: the config rebuilds them."""

    def __init__(self, normalization):
        super().__init__()
        for name, values in zip(("mean", "std"), NORMALIZATIONS[normalization]):
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class ConvNet(nn.Module):
    """standardize -> features -> pool -> classifier; the subclasses build the three parts."""

    def __init__(self, normalization):
        super().__init__()
        self.standardize = Standardize(normalization)
        self.pool = nn.Identity()

    def forward(self, x):
        return self.classifier(self.pool(self.features(self.standardize(x))))


def _conv_bn_act(c_in, c_out, act):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), act())


class ResidualBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus a shortcut (identity, or 1x1 conv + BN when channels change), then act."""

    def __init__(self, c_in, c_out, act):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = act()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


def _mlp_classifier(c_in, hidden, num_classes, act, dropout, bn=False):
    """Flatten, then per hidden width Linear-act-Dropout, or with bn Dropout-Linear-BatchNorm1d-act (the
    report's Task 2 BN models), then Linear to the classes."""
    layers = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(c_in, h), nn.BatchNorm1d(h), act()] if bn else \
            [nn.Linear(c_in, h), act(), nn.Dropout(dropout)]
        c_in = h
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*layers)


class ResVGG16(ConvNet):
    """The report's ResVGG16: stem conv-BN-act, five stages of [2, 2, 3, 3, 3] blocks, each stage followed
    by a 2x2 max-pool, global average pool, MLP classifier with dropout. residual=False: no shortcuts, one
    conv-BN-act per block (stem + 13 = 14 convs, with BN; the author's plain VGG16 is VGG16)."""

    def __init__(self, arch="standard", act="relu", residual=True, width=1.0, dropout=0.5, num_classes=10,
                 normalization="cifar10", leaky_slope=0.01):
        super().__init__(normalization)
        channels, hidden = ([_scaled(n, width) for n in widths] for widths in RESVGG16_ARCHS[arch])
        act_cls = _activation(act, leaky_slope)
        block = ResidualBlock if residual else _conv_bn_act
        layers = [_conv_bn_act(3, channels[0], act_cls)]
        c_in = channels[0]
        for c_out, n_blocks in zip(channels, RESVGG16_BLOCKS):
            for _ in range(n_blocks):
                layers.append(block(c_in, c_out, act_cls))
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _mlp_classifier(c_in, hidden, num_classes, act_cls, dropout)


class VGG16(ConvNet):
    """The report author's plain VGG16 (the network its code trained the grid with): 13 conv3x3 with bias and
    act, no BN, no shortcuts, stages of [2, 2, 3, 3, 3] each followed by a 2x2 max-pool, classifier
    Linear-act-Dropout x2 + Linear on the 1x1 map; widths of --arch standard / light."""

    def __init__(self, arch="standard", act="relu", width=1.0, dropout=0.5, num_classes=10, normalization="report",
                 leaky_slope=0.1):
        super().__init__(normalization)
        channels, hidden = ([_scaled(n, width) for n in widths] for widths in RESVGG16_ARCHS[arch])
        act_cls, layers, c_in = _activation(act, leaky_slope), [], 3
        for c_out, n_convs in zip(channels, RESVGG16_BLOCKS):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), act_cls()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = _mlp_classifier(c_in, hidden, num_classes, act_cls, dropout)


class VGGA(ConvNet):
    """The course's VGG-A for 32x32: conv3x3 + act stages 64 | 128 | 256,256 | 512,512 | 512,512, a 2x2
    max-pool after each, classifier 512-512-512-10. bn=True adds BatchNorm after every conv and nothing
    else (classifier_bn: also the report's Dropout-Linear-BN1d-act classifier); residual=True makes each
    conv a residual block."""

    def __init__(self, bn=False, residual=False, act="relu", width=1.0, dropout=0.0, num_classes=10,
                 normalization="cifar10", leaky_slope=0.01, classifier_bn=False):
        super().__init__(normalization)
        act_cls = _activation(act, leaky_slope)
        layers, c_in = [], 3
        for stage in VGG_A_STAGES:
            for c_out in (_scaled(c, width) for c in stage):
                if residual:
                    layers.append(ResidualBlock(c_in, c_out, act_cls))
                else:
                    layers += [nn.Conv2d(c_in, c_out, 3, padding=1)]
                    layers += [nn.BatchNorm2d(c_out)] if bn else []
                    layers.append(act_cls())
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        hidden = _scaled(512, width)
        self.classifier = _mlp_classifier(c_in, [hidden, hidden], num_classes, act_cls, dropout, classifier_bn)


def _initialize(model, init, act):
    """'default': PyTorch's own; 'xavier': Xavier-normal conv and linear weights; 'kaiming': the report's Task 1
    VGG16 code, Kaiming-normal (fan_out) convs and N(0, 0.01) linears; 'kaiming_all': its Task 2 code,
    Kaiming-normal (fan_out, relu) convs and linears. Biases zero."""
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "xavier":
                nn.init.xavier_normal_(m.weight)
            elif init == "kaiming" and isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                relu = init == "kaiming_all" or act != "tanh"
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu" if relu else "tanh")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(cfg):
    """The model a config describes; `cfg` is the dict stored in config.json and in every checkpoint."""
    cfg = complete_config(cfg)
    name, common_args = cfg["model"], dict(act=cfg["act"], width=cfg["width"], dropout=cfg["dropout"],
                                           num_classes=cfg["num_classes"], normalization=cfg["normalization"],
                                           leaky_slope=cfg["leaky_slope"])
    if name == "resvgg16":
        model = ResVGG16(cfg["arch"], residual=cfg["residual"], **common_args)
    elif name == "vgg16":
        model = VGG16(cfg["arch"], **common_args)
    elif name in VGG_A_MODELS:
        model = VGGA(bn=name != "vgg_a", residual=name == "vgg_a_res_bn", classifier_bn=cfg["classifier_bn"],
                     **common_args)
    else:
        raise ValueError(f"unknown model {name!r}; known: {MODELS}")
    _initialize(model, cfg["init"], cfg["act"])
    if cfg["zero_init_residual"]:
        blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
        if not blocks:
            raise UsageError(f"--zero-init-residual: {name} has no residual blocks")
        for block in blocks:
            nn.init.zeros_(block.bn2.weight)
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# -- losses and optimizers ---------------------------------------------------------------------

def loss_fn(name, label_smoothing=0.0):
    """logits, targets -> mean loss. 'nll' is log_softmax + NLLLoss, the same function as 'ce' (smoothed as
    cross_entropy smooths: (1 - ε) NLL + ε / classes · Σ -log p; the twins' losses and gradients agree bit
    for bit); 'mse' compares softmax probabilities with one-hot targets."""
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if name == "nll":
        return lambda logits, y: smoothed_nll(F.log_softmax(logits, dim=1), y, label_smoothing)
    if name == "mse":
        return lambda logits, y: F.mse_loss(logits.softmax(dim=1), F.one_hot(y, logits.shape[1]).to(logits.dtype))
    raise ValueError(f"unknown loss {name!r}; known: {LOSSES}")


def smoothed_nll(log_probs, y, label_smoothing=0.0):
    """NLLLoss of log-probabilities against targets smoothed by `label_smoothing` (none at 0)."""
    nll = F.nll_loss(log_probs, y)
    if not label_smoothing:
        return nll
    uniform = (-log_probs.sum(dim=1)).mean()
    return (1 - label_smoothing) * nll + (label_smoothing / log_probs.shape[1]) * uniform


class ScratchSGD(torch.optim.Optimizer):
    """Momentum SGD with L2 weight decay by hand, the update of torch.optim.SGD: d = g + wd*p; buf = momentum*buf
    + d (d on the first step); p -= lr * (d + momentum*buf if nesterov else buf)."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                if group["momentum"]:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    buf = state["momentum_buffer"] = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    d = d.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(d, alpha=-group["lr"])


def _param_groups(model, cfg):
    """The model's parameters for the optimizer; where cfg says decay_bn_bias False, biases and BN weights (the
    1-D tensors) form a second group without weight decay (Goyal et al. 2017; He et al. 2019, "no bias decay")."""
    params = trainable(model)
    if cfg.get("decay_bn_bias", True):
        return params
    return [dict(params=[p for p in params if p.dim() > 1]), dict(params=[p for p in params if p.dim() <= 1],
                                                                  weight_decay=0.0)]


def make_optimizer(cfg, params):
    name, lr, wd = cfg["opt"], cfg["lr"], cfg["wd"]
    if name in ("sgd", "sgd_scratch"):
        sgd = torch.optim.SGD if name == "sgd" else ScratchSGD
        return sgd(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd, nesterov=cfg["nesterov"])
    if name in ("adam", "adamw"):
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")


SCHEDULES = ["cosine_step", "cosine_epoch", "onecycle", "none"]


def lr_schedule(optimizer, kind, epochs, steps_per_epoch, total=None):
    """Stepped once per batch. cosine_step: cosine from the base lr to 0 over the run, batch by batch;
    cosine_epoch: the same curve held constant within each epoch (CosineAnnealingLR(T_max=epochs) stepped per
    epoch, as the report's code); onecycle: linear up to the base lr over the first FAST_WARMUP of the steps,
    then linear down to 0 (Smith 2018; Myrtle's ResNet-9); none: constant. `total` (default all the epochs'
    steps) is where the schedules reach 0."""
    total = total or epochs * steps_per_epoch
    warm = max(1, round(FAST_WARMUP * total))
    factors = {"onecycle": lambda step: (step + 1) / warm if step < warm else max(total - step, 0) / (total - warm),
               "cosine_step": lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
               "cosine_epoch": lambda step: 0.5 * (1 + math.cos(math.pi * min(step // steps_per_epoch, epochs)
                                                                / epochs)),
               "none": lambda step: 1.0}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[kind])


# -- settings: every setting of a run and every recipe, as data -------------------------------
#
# A run's config is built in one place, make_config: each setting's default < the script's task defaults <
# the recipe's value for the model's task < the settings given. SETTINGS names every config key once with
# its kind, from which the rest is derived: "run" keys decide what is trained (two runs are the same run
# when they agree on them), "runtime" keys only where and how it runs (--resume may change them),
# "numerics" keys are --precision resolved on the device (configs from before they were recorded lack them).

RECIPE = "the recipe's"  # a default taken from RECIPES


class Per:
    """A recipe value that depends on another setting: Per("opt", sgd=0.01, adam=1e-4, other=0.0) is the value
    named for cfg[field], or `other`."""

    def __init__(self, field, other=None, **values):
        self.field, self.other, self.values = field, other, values

    def __call__(self, cfg):
        return self.values.get(cfg[self.field], self.other)

    def __str__(self):
        named = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.values.items()
                 if not (k == "sgd_scratch" and v == self.values.get("sgd"))]
        return ", ".join(named + ([f"else {self.other}"] if self.other is not None else []))


def _per_opt(sgd, adam, adamw=None):
    """A value for each optimizer; sgd_scratch is SGD by hand, AdamW takes Adam's unless given."""
    return Per("opt", sgd=sgd, sgd_scratch=sgd, adam=adam, adamw=adam if adamw is None else adamw)


# Every recipe's settings per task (a task is the model's family: Task 1 ResVGG16 / VGG16, Task 2 VGG-A).
# ours: README's recipe; report: what the report author's code ran (results/what-the-reports-code-did.md);
# fast: README, "The fast recipe" (each value with its source); paper: Santurkar et al. 2018, Appendix A.
_OURS = dict(epochs=60, batch_size=128, lr=_per_opt(0.01, 1e-4), momentum=0.9, nesterov=False,
             wd=_per_opt(5e-4, 0.0, 1e-2), dropout=0.5, label_smoothing=0.0, schedule="cosine_step",
             normalization="cifar10", augment=True, classifier_bn=False, decay_bn_bias=True,
             init=Per("model", resvgg16="default", vgg16="kaiming", other="xavier"),
             leaky_slope=Per("model", vgg16=0.1, other=0.01))
_FAST = dict(_OURS, epochs=30, batch_size=_per_opt(128, 256), lr=_per_opt(0.1, 1e-3), nesterov=True, dropout=0.0,
             label_smoothing=Per("loss", ce=0.1, nll=0.1, other=0.0), schedule="onecycle", decay_bn_bias=False,
             init=Per("model", resvgg16="default", other="xavier"))
_TASK2 = dict(lr=_per_opt(0.01, 1e-3), init="xavier")
RECIPES = {
    "task1": {
        "ours": _OURS,
        "report": dict(_OURS, epochs=100, wd=_per_opt(1e-4, 0.0), schedule=_per_opt("cosine_epoch", "none"),
                       normalization="report", init=Per("model", resvgg16="xavier", other="kaiming")),
        "fast": _FAST,
    },
    "task2": {
        "ours": dict(_OURS, epochs=20, dropout=0.0, **_TASK2),
        "report": dict(_OURS, epochs=50, batch_size=64, wd=0.0, dropout=Per("model", vgg_a=0.0, other=0.5),
                       schedule="none", normalization="half", augment=False,
                       classifier_bn=Per("model", vgg_a=False, other=True), **dict(_TASK2, init="kaiming_all")),
        "fast": dict(_FAST, **dict(_TASK2, lr=_per_opt(0.1, 1e-3))),
        "paper": dict(_OURS, epochs=20, dropout=0.0, **dict(_TASK2, lr=0.1), opt="sgd", momentum=0.0, wd=0.0,
                      schedule="none", augment=False, steps=15000),
    },
}
TASK_DEFAULTS = {  # what each task's train.py trains without flags: Task 1 the report's best configuration
    "task1": dict(model="resvgg16", arch="standard", act="leaky_relu", opt="sgd"),
    "task2": dict(model="vgg_a", arch="standard", act="relu", opt="adam"),
}
TASK = "the task's"  # a default taken from TASK_DEFAULTS


def _setting(kind, default, help="", flag=True, **argparse_kwargs):
    return dict(kind=kind, default=default, help=help, flag=flag, argparse=argparse_kwargs)


SETTINGS = {  # name: kind, default, --help text; flag=False: set by the recipe only; grouped as --help shows
    "model": dict(
        model=_setting("run", TASK, "resvgg16, vgg16 (Task 1); vgg_a, vgg_a_bn, vgg_a_res_bn (Task 2)",
                       choices=MODELS),
        arch=_setting("run", TASK, "ResVGG16 widths: standard [64..512] + FC 4096x2, light [32..256] + FC 1024/512",
                      choices=sorted(RESVGG16_ARCHS)),
        act=_setting("run", TASK, "activation everywhere", choices=sorted(ACTIVATIONS)),
        residual=_setting("run", True, "ResVGG16 without shortcuts: stem + 13 conv-BN-act (the report's plain VGG16: "
                          "--model vgg16)", action="store_false", option="--no-residual"),
        init=_setting("run", RECIPE, "weights: default (PyTorch), xavier, kaiming, kaiming_all", choices=INITS),
        leaky_slope=_setting("run", RECIPE, "LeakyReLU slope", type=float),
        width=_setting("run", 1.0, "multiplies every channel and FC width", type=float),
        dropout=_setting("run", RECIPE, "dropout in the classifier", type=float),
        zero_init_residual=_setting("run", False, "zero the last BN γ of every residual block, so that each block "
                                    "starts as its shortcut (Goyal et al. 2017)", action="store_true"),
        classifier_bn=_setting("run", RECIPE, flag=False),
        normalization=_setting("run", RECIPE, flag=False),
        num_classes=_setting("run", 10, flag=False)),
    "loss and optimizer": dict(
        loss=_setting("run", "ce", "nll = log_softmax + NLLLoss; mse: softmax vs one-hot", choices=LOSSES),
        label_smoothing=_setting("run", RECIPE, "label smoothing for --loss ce or nll", type=float),
        opt=_setting("run", TASK, "optimizer", choices=OPTIMIZERS),
        lr=_setting("run", RECIPE, "peak learning rate", type=float),
        momentum=_setting("run", RECIPE, "SGD momentum", type=float),
        nesterov=_setting("run", RECIPE, "Nesterov momentum for SGD", action="store_true"),
        wd=_setting("run", RECIPE, "weight decay", type=float),
        decay_bn_bias=_setting("run", RECIPE, flag=False),
        epochs=_setting("run", RECIPE, "epochs", type=int),
        steps=_setting("run", None, "a budget of optimizer steps instead of --epochs: train exactly N steps (the "
                       "last epoch may be partial; the schedule spans the N steps)", type=int),
        batch_size=_setting("run", RECIPE, "training batch size", type=int),
        schedule=_setting("run", RECIPE, flag=False),
        recipe=_setting("run", "ours", "report: the settings the report author's code ran (README: what the report's "
                        "code did); fast: a short one-cycle schedule for a CPU (README: the fast recipe); paper "
                        "(Task 2): Santurkar et al.'s"),
        augment=_setting("run", RECIPE, flag=False),
        ema=_setting("run", 0.0, "evaluate (validation, best.pt, test) an exponential moving average of the weights "
                     "and BN statistics, this decay per step, warmed up as min(decay, (1 + t) / (10 + t)) (0: off)",
                     type=float, metavar="DECAY"),
        tta=_setting("run", "none", "test-time augmentation, reported beside the plain numbers, never instead: flip "
                     "averages the logits of each image and its mirror (best.pt, validation and test)",
                     choices=TTA_KINDS)),
    "data and device": dict(
        data_dir=_setting("runtime", os.environ.get("CIFAR10_DIR", "data"),
                          "folder holding cifar-10-batches-py/ ($CIFAR10_DIR or ./data)"),
        no_download=_setting("runtime", False, "fail instead of downloading a missing dataset", action="store_true"),
        device=_setting("runtime", "auto", "CUDA when available", choices=["auto", "cpu", "cuda"]),
        val=_setting("run", 5000, "training images held out for validation (at most a tenth of them)", type=int),
        subset=_setting("run", 0, "train on the first N remaining training images (0: all)", type=int),
        test_subset=_setting("run", 0, "test on the first N test images (0: all)", type=int),
        no_test=_setting("runtime", False, "never read the test set (a try of a recipe search: it is chosen on "
                         "validation; result.json's test numbers stay null)", action="store_true")),
    "run": dict(
        precision=_setting("numerics", "auto", "auto: bf16 autocast (+ channels_last) where the device computes "
                           "bf16 fast (CUDA, a CPU with AVX512-BF16/AMX), else fp32; stored resolved in config.json",
                           choices=PRECISIONS),
        memory_format=_setting("numerics", None, flag=False),
        compile=_setting("runtime", False, "torch.compile the model (inductor; on the CPU it needs a C++ compiler "
                         "and a minute or more)", action="store_true"),
        seed=_setting("run", 0, "initialization, data order and augmentation", type=int),
        save_trajectory=_setting("runtime", 0, "keep the weights every K steps and at each epoch end in "
                                 "<out>/trajectory/ (float16, 2 bytes a parameter), for landscape.py --trajectory "
                                 "(0: never)", type=int, metavar="K"),
        diverge_patience=_setting("run", 5, "stop as diverged after this many epochs in a row at chance train "
                                  "accuracy without a new lowest train loss (0: never); a non-finite loss stops at "
                                  "once", type=int),
        out=_setting("runtime", None, "run folder (default runs/<name from the config>)"),
        resume=_setting("runtime", False, "continue the run in --out from its last.pt", action="store_true"),
        overwrite=_setting("runtime", False, "start over in an --out that already holds a run",
                           action="store_true")),
}
SETTING = {name: s for group in SETTINGS.values() for name, s in group.items()}
RUNTIME_KEYS = frozenset(k for k, s in SETTING.items() if s["kind"] == "runtime")
NUMERICS_KEYS = tuple(k for k, s in SETTING.items() if s["kind"] == "numerics")


def _task_of(model):
    return "task2" if model in VGG_A_MODELS else "task1"


def _default_text(name, task):
    """What --help says a setting defaults to in `task`: its value, or the value per recipe."""
    s = SETTING[name]
    if s["default"] is TASK:
        return str(TASK_DEFAULTS[task][name])
    if s["default"] is not RECIPE:
        return str(s["default"])
    per_recipe = [(r, values.get(name)) for r, values in RECIPES[task].items()]  # None: the recipe leaves it
    shown = [f"{r}: {'' if v is None else v}" for r, v in per_recipe]
    return "; ".join(shown) if len({str(v) for _, v in per_recipe}) > 1 else str(per_recipe[0][1])


def complete_config(cfg, task=None):
    """cfg with every "run" setting it lacks (missing or None) filled in; what it was given wins, then the
    recipe's values for the model's task, the task's defaults (task: the script's, else the model's), each
    setting's default, and last the recipe's values that depend on another setting (a Per). A config saved
    before a setting existed gets the value it was trained with, so a new setting must default to the old
    behaviour."""
    cfg = {k: v for k, v in cfg.items() if v is not None}
    defaults = TASK_DEFAULTS[task or _task_of(cfg.get("model", "resvgg16"))]
    cfg.setdefault("model", defaults["model"])
    cfg.setdefault("recipe", "ours")
    recipes = RECIPES[_task_of(cfg["model"])]
    if cfg["recipe"] not in recipes:
        raise UsageError(f"--recipe {cfg['recipe']} is not a recipe of {cfg['model']} (its recipes: "
                         f"{', '.join(recipes)})")
    recipe = recipes[cfg["recipe"]]
    plain = {k: v for k, v in recipe.items() if not isinstance(v, Per)}
    own = {k: s["default"] for k, s in SETTING.items() if s["kind"] == "run" and s["default"] not in (TASK, RECIPE)}
    for values in (plain, defaults, own):
        for name, value in values.items():
            cfg.setdefault(name, value)
    for name, value in recipe.items():
        if isinstance(value, Per):
            cfg.setdefault(name, value(cfg))
    return cfg


def make_config(task="task1", **given):
    """The complete config of a new run (what config.json stores) from the settings given by name (None: not
    given): complete_config, runtime defaults, --precision resolved on the device, --out defaulted. Raises
    UsageError for a value that makes no sense."""
    unknown = sorted(set(given) - set(SETTING))
    if unknown:
        raise ValueError(f"unknown settings {unknown}")
    cfg = complete_config(given, task)
    for name, s in SETTING.items():
        if s["kind"] != "run" and cfg.get(name) is None:
            cfg[name] = s["default"]
    cfg.update(numerics_for(cfg["precision"], resolve_device(cfg["device"])).as_dict())
    if cfg["label_smoothing"] and cfg["loss"] == "mse":
        raise UsageError("--label-smoothing applies to --loss ce and nll only")
    _check_numbers(cfg)
    cfg["out"] = cfg["out"] or os.path.join("runs", _run_name(cfg))
    return {name: cfg[name] for name in SETTING}  # one key order for every config.json


def add_settings(parser, task="task1", names=None, suppress=True):
    """The flags of SETTINGS (or only `names`, without group headers) on parser, each with the default it has in
    `task`. suppress: a flag not given is absent from the parsed namespace (argparse.SUPPRESS), so that
    make_config knows what was given; else it holds the setting's default."""
    for group, settings in SETTINGS.items():
        chosen = [(n, s) for n, s in settings.items() if s["flag"] and (names is None or n in names)]
        g = parser.add_argument_group(group) if chosen and names is None else parser
        for name, s in chosen:
            kwargs = dict(s["argparse"])
            option = kwargs.pop("option", "--" + name.replace("_", "-"))
            if name == "recipe":
                kwargs["choices"] = list(RECIPES[task])
            shown = "" if kwargs.get("action") == "store_false" or s["default"] is None else \
                f" (default: {_default_text(name, task)})"
            default = argparse.SUPPRESS if suppress else s["default"]
            g.add_argument(option, dest=name, default=default, help=s["help"] + shown, **kwargs)
    return parser


def train_parser(script, task):
    return add_settings(argparse.ArgumentParser(description=f"Train one configuration on CIFAR-10 ({script})."), task)


def _task_of_script(script):
    return "task2" if script.replace(os.sep, "/").startswith("task2") else "task1"


def parse_config(script, argv):
    """The config a training script makes of its command line (argparse errors exit 2, as the script would)."""
    task = _task_of_script(script)
    return make_config(task, **vars(train_parser(script, task).parse_args(argv)))


def _check_numbers(cfg):
    """UsageError naming the first flag whose value makes no sense."""
    big = torch.finfo(torch.float32).max  # an lr or weight decay beyond it cannot even be applied to fp32 weights
    rules = [("--epochs", cfg["epochs"] >= 1), ("--steps", cfg.get("steps") is None or cfg["steps"] >= 1),
             ("--batch-size", cfg["batch_size"] >= 1),
             ("--width", 0 < cfg["width"] < math.inf), ("--lr", 0 <= cfg["lr"] < big), ("--wd", 0 <= cfg["wd"] < big),
             ("--momentum", 0 <= cfg["momentum"] < 1),
             ("--dropout", 0 <= cfg["dropout"] < 1), ("--ema", 0 <= cfg["ema"] < 1), ("--label-smoothing", 0 <= cfg["label_smoothing"] < 1),
             ("--leaky-slope", math.isfinite(cfg["leaky_slope"])), ("--val", cfg["val"] >= 0),
             ("--subset", cfg["subset"] >= 0), ("--test-subset", cfg["test_subset"] >= 0),
             ("--save-trajectory", cfg.get("save_trajectory", 0) >= 0)]
    for flag, ok in rules:  # a NaN fails every comparison, so it lands here too
        if not ok:
            value = cfg[flag[2:].replace("-", "_")]
            raise UsageError(f"{flag} {value}: out of range (positive finite sizes, an lr and weight decay >= 0 "
                             "that fp32 can hold; dropout, label smoothing, momentum and EMA decay in [0, 1); no negative counts)")


MODEL_LABELS = {"resvgg16": "ResVGG16", "vgg16": "plain VGG16", "vgg_a": "VGG-A", "vgg_a_bn": "VGG-A + BN",
                "vgg_a_res_bn": "VGG-A + BN + residual"}
WORDS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "tanh", "gelu": "GELU", "ce": "cross-entropy",
         "nll": "NLL", "mse": "MSE", "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "sgd_scratch": "SGD (by hand)"}


DESCRIBED = ("model", "arch", "residual", "act", "loss", "opt", "lr", "recipe", "width", "subset", "seed", "tta")


def _in_words(name, value):
    """'label smoothing 0.2', 'zero init residual' (True), 'no classifier bn' (False)."""
    words = name.replace("_", " ")
    if isinstance(value, bool):
        return words if value else f"no {words}"
    return f"{words} {value:g}" if isinstance(value, float) else f"{words} {value}"


def describe(cfg):
    """A run's configuration in words, for figure titles: 'ResVGG16-light, LeakyReLU, cross-entropy, SGD lr 0.1
    (recipe fast, label smoothing 0.2, seed 0)'; width and image count only where they are not the full ones,
    and every other setting in which the run departs from its recipe (a try of the recipe search says what it
    tries); test-time augmentation, which no curve shows, left out."""
    model = MODEL_LABELS.get(cfg["model"], cfg["model"])
    if cfg["model"] in ("resvgg16", "vgg16"):
        model += f"-{cfg['arch']}" + ("" if cfg["residual"] or cfg["model"] == "vgg16" else ", no shortcuts")
    recipe = complete_config({k: cfg[k] for k in DESCRIBED[:6] + ("recipe",) if k in cfg})
    departs = [_in_words(k, cfg[k]) for k in config_differences(cfg, recipe) if k not in DESCRIBED and k in cfg]
    extras = [f"recipe {cfg['recipe']}" if cfg.get("recipe") not in (None, "ours") else "", *departs,
              f"width {cfg['width']:g}" if cfg["width"] != 1 else "",
              f"{cfg['subset']:,} training images" if cfg["subset"] else "", f"seed {cfg['seed']}"]
    return (f"{model}, {WORDS.get(cfg['act'], cfg['act'])}, {WORDS.get(cfg['loss'], cfg['loss'])}, "
            f"{WORDS.get(cfg['opt'], cfg['opt'])} lr {cfg['lr']:g} ({', '.join(filter(None, extras))})")


def _run_name(cfg):
    arch = [cfg["arch"]] if cfg["model"] in ("resvgg16", "vgg16") else []
    parts = [cfg["model"], *arch, cfg["act"], cfg["loss"], cfg["opt"], f"lr{cfg['lr']:g}"]
    if not cfg["residual"] and cfg["model"] == "resvgg16":
        parts.append("plain")
    if cfg.get("recipe") in ("report", "fast"):
        parts.append(cfg["recipe"])
    if cfg["width"] != 1:
        parts.append(f"w{cfg['width']:g}")
    if cfg["subset"]:
        parts.append(f"n{cfg['subset']}")
    return "_".join(parts + [f"s{cfg['seed']}"])


# -- device, evaluation, RNG ------------------------------------------------------------------

def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def device_name(device):  # as printed and stored in result.json / surface.json
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _machine_name(device):
    """The device for a reader: the GPU's name, or the CPU's model and core count (result.json 'machine')."""
    if device.type == "cuda":
        return device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    except OSError:
        model = "CPU"
    return f"{model}, {os.cpu_count()} cores"


@torch.no_grad()
def evaluate(model, images, labels, criterion, device, batch_size=EVAL_BATCH, numerics=FP32, tta="none"):
    """Mean loss and accuracy of `model` in eval mode on uint8 images: no augmentation, or with tta 'flip' the
    mean of the logits of each image and of its mirror image."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for i in range(0, len(labels), batch_size):
        x = numerics.inputs(images[i:i + batch_size])
        y = labels[i:i + batch_size]
        with numerics.autocast(device):
            logits = model(x).float()
            if tta == "flip":
                logits = (logits + model(x.flip(3)).float()) / 2
        loss_sum += criterion(logits, y).double() * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / max(len(labels), 1), correct.item() / max(len(labels), 1)


def rng_state(device):
    """torch's CPU RNG state and, on CUDA, the device's (None on CPU)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda" and state[1] is not None:  # a CPU checkpoint resumed on CUDA has none
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
# -- files and checkpoints (atomic writes) ----------------------------------------------------

def _atomic_path(path):
    """A temporary name beside `path` (same extension) to write to, renamed onto `path` only when the block
    succeeds: a crash or kill never leaves a half-written file that a later step would read."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_digest(path):
    """SHA-256 of a file's bytes (None if it does not exist): what a derived result was derived from."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model):
    """SHA-256 of the model's state_dict (names and bytes, in order): equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_text(path, text):
    with _atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_npz(path, **arrays):
    with _atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def save_checkpoint(path, payload):
    with _atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError: made an OSError, one line
            raise OSError(f"{path} could not be written (is the disk full?): {str(e).splitlines()[0][:120]}") \
                from None


def read_checkpoint(path, device="cpu"):
    """The checkpoint dict; a missing, truncated or foreign file is a UsageError naming it."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
            raise KeyError("no config and model in it")
        return ckpt
    except FileNotFoundError:
        raise UsageError(f"{path}: checkpoint not found") from None
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UsageError(f"{path} is not a checkpoint of this repository (or is truncated): "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:120]}") from None


def load_checkpoint(path, device="cpu"):
    """(model rebuilt from the checkpoint's own config, with its weights; the checkpoint dict). A missing,
    truncated or foreign file is a UsageError naming it."""
    ckpt = read_checkpoint(path, device)
    try:
        model = build_model(ckpt["config"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} is not a checkpoint of this repository: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    return model.to(device), ckpt


def write_json(path, obj):
    write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def load_json(path):
    """The JSON file `path`; one that is cut short or garbled is a CorruptFile naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptFile(f"{path} is not valid JSON (cut short?): {e}; delete it to make it again") from None


def load_npz(path):
    """The arrays of the .npz file `path` as a dict; one that is cut short or garbled is a CorruptFile."""
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptFile(f"{path} is not a readable .npz (cut short?): {type(e).__name__}: {e}") from None


def read_metrics(run_dir):
    """metrics.jsonl of a run folder as a list of per-epoch dicts. A last line cut short by a kill (written
    without its newline) is left out: last.pt does not count that epoch either; any other bad line is a
    UsageError naming the file."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the append was cut short
                break
            raise UsageError(f"{path}: line {number} is not JSON; delete the run folder to train it again") from None
    return records


def json_safe(obj):
    """NaN and inf become null, so every JSON file opens in any tool."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def percent(v):  # an accuracy in table cells
    return "–" if v is None else f"{100 * v:.2f}"


# -- run folder: signals, locks, resume -------------------------------------------------------

class GracefulStop:
    """The first Ctrl-C / SIGTERM asks to stop after the current step; a second Ctrl-C stops at once, except
    once `finishing` is set (the final save is under way: it is let finish)."""

    requested, signal_name, finishing = False, None, False

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.finishing:
            print(f"\n{signal.Signals(signum).name}: saving the run's final state first ...", flush=True)
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after the current step ...", flush=True)


@contextlib.contextmanager
def folder_lock(folder):
    """Only one process writes into `folder`: .lock holds the writer's pid and host. A lock whose process is
    gone (same host) is taken over; a live one refuses with a UsageError naming it. A folder this call
    created is removed again if it is still empty on exit (nothing left behind by a refused or failed call)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--out {folder} is a file, not a folder")
    path, me = os.path.join(folder, ".lock"), f"{os.getpid()} {socket.gethostname()}"
    created, parent = [], os.path.abspath(folder)
    while not os.path.isdir(parent):  # the folders this call creates, deepest first
        created.append(parent)
        parent = os.path.dirname(parent)
    os.makedirs(folder, exist_ok=True)
    try:
        _take_lock(path, folder, me)
        try:
            yield
        finally:
            if os.path.exists(path) and open(path).read() == me:
                os.remove(path)
    finally:
        for made in created:
            if os.path.isdir(made) and not os.listdir(made):
                os.rmdir(made)


def _take_lock(path, folder, me):
    """Create the lock file `path` holding `me`, taking over a stale one; a live one raises UsageError."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid, _, host = open(path).read().partition(" ")
            if not _stale_lock(path, pid, host):
                raise UsageError(f"{folder} is in use by process {pid} on {host} (lock {path}); wait for it, or "
                                 "delete the lock if that process is gone") from None
            print(f"note: taking over {path} of {f'process {pid}' if pid else 'nobody'}, which is gone", flush=True)
            os.remove(path)
    try:
        os.write(fd, me.encode())
        os.fsync(fd)  # a full disk fails here, not later with an empty lock left behind
    except OSError:
        os.remove(path)
        raise
    finally:
        os.close(fd)


def _stale_lock(path, pid, host, write_seconds=10.0):
    """A lock of a process of this host that is gone, or one left empty (its writer died between creating and
    writing it) more than write_seconds ago; an empty one younger than that is being written."""
    if not pid:
        return time.time() - os.path.getmtime(path) > write_seconds
    return pid.isdigit() and host == socket.gethostname() and not _process_alive(int(pid))


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return pid > 0


def _prepare_run_dir(cfg):
    """--resume needs last.pt; a folder that holds a run needs --resume or --overwrite."""
    out, last = cfg["out"], os.path.join(cfg["out"], "last.pt")
    if cfg["resume"]:
        if not os.path.exists(last):
            raise UsageError(f"--resume but {last} does not exist")
    elif os.path.exists(last) and not cfg["overwrite"]:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or --overwrite to start over")
    os.makedirs(out, exist_ok=True)
    if cfg["resume"]:
        return
    # a new run: nothing old to resume or report, and no snapshots of an old run on the new path (one killed
    # before its first last.pt leaves config.json and snapshots, and no --overwrite is needed to replace it)
    old = [name for name in [*RUN_FILES, TRAJECTORY_FOLDER] if os.path.exists(os.path.join(out, name))]
    if old and not cfg["overwrite"]:
        print(f"note: removing {', '.join(old)} left in {out} by a run that saved no checkpoint", flush=True)
    for name in old:
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _ignored_on_resume(cfg, argv):
    """The flags given beside --resume whose value differs from the saved run's ('--epochs 5 (saved 3)')."""
    path = os.path.join(cfg["out"], "config.json")
    if not os.path.exists(path):
        return []
    saved = complete_config(load_json(path))
    given = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    given = {"residual" if k == "no_residual" else k for k in given}
    return [f"--{k.replace('_', '-')} {cfg[k]} (saved {saved.get(k)})" for k in config_differences(saved, cfg)
            if k in given]


def resume_config(cfg, argv):
    """--resume: says which flags given beside it the saved config overrides, and keeps the saved data folder
    and snapshot interval unless given again (a run resumes on the data it started with, and its path stays
    whole)."""
    ignored = _ignored_on_resume(cfg, argv)
    if ignored:
        print(f"note: --resume keeps the saved config; ignoring {', '.join(ignored)}", flush=True)
    path = os.path.join(cfg["out"], "config.json")
    if not os.path.exists(path):
        return cfg
    saved, given = load_json(path), {a.split("=")[0] for a in argv}
    return dict(cfg, **{k: saved[k] for k in ("data_dir", "save_trajectory")
                        if k in saved and "--" + k.replace("_", "-") not in given})


def config_differences(saved, cfg, numerics=True):
    """The settings, runtime flags aside, in which cfg differs from a saved config (one made before a recipe
    setting existed counts as trained with the value it had then). numerics=False: the resolved precision and
    memory format do not count (a run made with --precision auto on a machine whose auto is another)."""
    saved = complete_config(saved)
    skip = RUNTIME_KEYS | (frozenset() if numerics else frozenset(NUMERICS_KEYS))
    return sorted(k for k, v in cfg.items() if k not in skip and saved.get(k) != v
                  and not (k in NUMERICS_KEYS and k not in saved))  # older runs: as they were made


# -- the training loop ------------------------------------------------------------------------

def train_main(script, argv=None):
    """What `python task*/train.py` does: parse flags, train, turn errors into one line. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(script, argv)
        if cfg["resume"]:
            cfg = resume_config(cfg, argv)
        result = train(cfg)
    except USER_ERRORS as e:
        return fail(e)
    if result["status"] == "interrupted":  # the same flags (device, ...), --data-dir and --out, plus --resume
        flags = [a for a in argv if a not in ("--overwrite", "--resume")]
        given = {a.split("=")[0] for a in flags}
        flags += [] if "--data-dir" in given else ["--data-dir", cfg["data_dir"]]  # e.g. from $CIFAR10_DIR
        flags += [] if "--out" in given else ["--out", cfg["out"]]
        print(f"Resume with:\n  python {script} {shlex.join(flags)} --resume", flush=True)
        return 130
    return 0


def train(cfg, step_hook=None):
    """The one training loop: trains the model `cfg` describes, writes the run folder, returns result.json's
    dict. torch's RNG (init, dropout) and a CPU generator (data order, augmentation) are seeded by
    cfg['seed'] and saved in last.pt, mid-epoch if interrupted, so --resume continues bit-exactly.
    step_hook(run, x, y, loss, step) runs between backward and optimizer step (Task 2's probes); `step`
    counts optimizer steps from the start of training."""
    with folder_lock(cfg["out"]):
        run = _setup_run(cfg)
        status = "completed"  # the run's one status: completed, diverged or interrupted
        with GracefulStop() as stop:
            while status == "completed" and run.state.epoch < run.epochs:
                status = _train_epoch(run, stop, step_hook)
                if status == "completed":
                    status = _finish_epoch(run, stop)
            stop.finishing = True  # a second signal now would lose the mid-epoch state and leave files behind
            return _finish_run(run, status, stop.signal_name)


@dataclasses.dataclass
class Progress:
    """How far a run is (what last.pt saves of it): `global_step` counts optimizer steps from the start of
    training, the one step counter; `epoch` the finished epochs; the sums are those of the epoch under way."""
    epoch: int = 0
    global_step: int = 0
    perm: torch.Tensor = None  # the epoch's image order
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    epoch_lr: float = None  # the lr of the epoch's first step
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # of the sessions before this one
    best_val_acc: float = None
    best_epoch: int = None
    stuck_epochs: int = 0
    history: list = dataclasses.field(default_factory=list)  # metrics.jsonl's records


class WeightAverage:
    """An exponential moving average of a model's weights and BN statistics (Polyak averaging as in Izmailov et
    al.'s and timm's EMA), updated after every optimizer step; `model` is the averaged copy that is evaluated.
    The decay warms up as min(decay, (1 + t) / (10 + t)) so the random initialisation is soon forgotten."""

    def __init__(self, model, decay):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        pairs = [(a, b) for a, b in zip(self.model.state_dict().values(), model.state_dict().values())]
        floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - decay)
        for a, b in pairs:
            if not a.is_floating_point():  # BN's num_batches_tracked
                a.copy_(b)

    def state_dict(self):
        return dict(model=self.model.state_dict(), updates=self.updates)

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


class Run:
    """One training run: config, device, data on the device, model, optimizer, and its Progress."""

    def __init__(self, cfg, device):
        self.cfg, self.out, self.device = cfg, cfg["out"], device
        self.numerics = saved_numerics(cfg, device)
        self.session_start, self.session_epochs = time.time(), 0
        self.state = Progress()
        self.divergence = None  # where a non-finite loss came from (_locate_divergence)
        self.load_data()
        self.build()

    @property
    def epoch_step(self):
        """Steps done in the epoch under way (0 at an epoch's start)."""
        return self.state.global_step - min(self.state.epoch * self.steps_per_epoch, self.total_steps)

    @property
    def eval_model(self):
        """What validation, best.pt and the test evaluate: the weight average under --ema, else the model."""
        return self.average.model if self.average else self.model

    def wall_seconds(self):
        """Wall time of the run over all its sessions (data loading, training, validation)."""
        return self.state.wall_seconds + time.time() - self.session_start

    def checkpoint(self):
        """Everything --resume needs to continue bit-exactly (on CPU)."""
        torch_rng, cuda_rng = rng_state(self.device)
        return dict(model=self.model.state_dict(), config=self.cfg, epoch=self.state.epoch,
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    torch_rng=torch_rng, cuda_rng=cuda_rng, data_rng=self.gen.get_state(),
                    average=self.average and self.average.state_dict(),
                    progress=dict(vars(self.state), wall_seconds=self.wall_seconds()))

    def load_data(self):
        """The run's training, validation and test images and labels, uint8 and int64 on its device."""
        cfg = self.cfg
        data = load_cifar10(cfg["data_dir"], download=not cfg["no_download"])
        train, val = split_train_val(data["train_x"], data["train_y"], cfg["val"], cfg["subset"])
        if len(train[1]) == 0 or len(val[1]) == 0:
            raise UsageError(f"{len(train[1])} training and {len(val[1])} validation images; both must be "
                             "non-empty (check --val and --subset)")
        n_test = 0 if cfg.get("no_test") else cfg.get("test_subset") or None
        self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y = (
            t.to(self.device) for t in (*train, *val, data["test_x"][:n_test], data["test_y"][:n_test]))
        # the last partial batch of each epoch is dropped (a fresh order every epoch, so none is left out
        # for good): a batch of a few images would give BN noisy statistics and the loss a spike
        self.steps_per_epoch = max(1, len(self.train_y) // cfg["batch_size"])
        # --steps: exactly that many steps, the last epoch cut short; else whole epochs
        self.total_steps = cfg.get("steps") or cfg["epochs"] * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def build(self):
        """Seeded model (in the run's memory format, compiled with --compile), loss, optimizer, schedule."""
        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg["seed"])
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        self.model = self.numerics.place(build_model(cfg), device)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        if has_bn and min(cfg["batch_size"], len(self.train_y)) < 2:
            raise UsageError(f"--batch-size {cfg['batch_size']} with {len(self.train_y)} training images: BatchNorm "
                             "needs batches of at least 2 images")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.forward = torch.compile(self.model) if cfg["compile"] else self.model
        self.criterion = loss_fn(cfg["loss"], cfg["label_smoothing"])
        self.optimizer = make_optimizer(cfg, _param_groups(self.model, cfg))
        self.average = WeightAverage(self.model, cfg["ema"]) if cfg["ema"] else None
        self.scheduler = lr_schedule(self.optimizer, cfg["schedule"], self.epochs, self.steps_per_epoch,
                                     self.total_steps)


def _setup_run(cfg):
    """A new Run, or the one in --out restored from last.pt with --resume; prints the run's header."""
    device = resolve_device(cfg["device"])  # before anything is written
    _prepare_run_dir(cfg)
    ckpt = None
    if cfg["resume"]:
        ckpt = read_checkpoint(os.path.join(cfg["out"], "last.pt"))  # a truncated file is one line
        cfg = {**complete_config(ckpt["config"]), **{k: cfg[k] for k in RUNTIME_KEYS}}
    run = Run(cfg, device)  # data and model are checked before a new run writes anything
    if ckpt is None:
        write_json(os.path.join(cfg["out"], "config.json"), cfg)
    print(f"{_run_name(cfg)}: {count_params(run.model):,} parameters | {len(run.train_y)} train / "
          f"{len(run.val_y)} val / {len(run.test_y)} test images | {device_name(run.device)} | out {run.out}",
          flush=True)
    if ckpt is not None:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state((ckpt["torch_rng"], ckpt["cuda_rng"]), run.device)
        run.gen.set_state(ckpt["data_rng"])
        if run.average:
            run.average.load_state_dict(ckpt["average"])
        run.state = _saved_progress(ckpt["progress"], run.steps_per_epoch)
        print(f"resumed from {run.out}/last.pt at epoch {run.state.epoch + 1}, step {run.epoch_step}", flush=True)
    write_text(os.path.join(run.out, "metrics.jsonl"),  # rewritten so it matches last.pt exactly
               "".join(json.dumps(json_safe(m)) + "\n" for m in run.state.history))
    return run


def _saved_progress(saved, steps_per_epoch):
    """last.pt's progress as a Progress; wall_seconds: the earlier sessions' (this one's counts from Run()).
    Checkpoints written before the one step counter (#28) saved `step`, the step within the epoch."""
    saved = dict(saved)
    if "step" in saved:
        saved["global_step"] = saved["epoch"] * steps_per_epoch + saved.pop("step")
    return Progress(**saved)


def _train_epoch(run, stop, step_hook=None):
    """The steps left in the epoch; returns 'completed', 'diverged' (non-finite loss) or 'interrupted'."""
    state, device = run.state, run.device
    if run.epoch_step == 0:
        state.perm, state.loss_sum, state.correct, state.seen = torch.randperm(len(run.train_y), generator=run.gen), \
            0.0, 0, 0
        state.epoch_seconds, state.epoch_lr = 0.0, run.optimizer.param_groups[0]["lr"]
    run.model.train()
    loss_sum = torch.tensor(state.loss_sum, device=device, dtype=torch.float64)
    correct = torch.tensor(state.correct, device=device, dtype=torch.int64)
    status, started, last_print = "completed", time.time(), time.time()
    n_steps = min(run.steps_per_epoch, run.total_steps - state.epoch * run.steps_per_epoch)  # --steps: fewer
    finite = _replay_point(run, run.epoch_step)  # the state at the last check that found the loss finite
    for step in range(run.epoch_step, n_steps):
        loss, n_correct, n = _train_step(run, step, step_hook)
        loss_sum += loss.detach().double() * n
        correct += n_correct
        state.seen += n
        state.global_step += 1
        if run.cfg.get("save_trajectory") and state.global_step % run.cfg["save_trajectory"] == 0:
            _save_snapshot(run)
        if (step + 1) % LOSS_CHECK_EVERY == 0 or step + 1 == n_steps or stop.requested:
            if not math.isfinite(loss_sum.item()):  # a running sum is non-finite as soon as one loss was
                run.divergence = _locate_divergence(run, finite, step)
                print(f"epoch {state.epoch + 1} step {step + 1}: loss is not finite -> diverged; first non-finite: "
                      f"{run.divergence['first_nonfinite']} at step {run.divergence['global_step']}", flush=True)
                status = "diverged"
                break
            finite = _replay_point(run, step + 1)
        if time.time() - last_print > PROGRESS_EVERY_S:  # checked every step: a slow CPU step can take seconds
            last_print = time.time()
            rate = state.seen / (state.epoch_seconds + last_print - started)
            print(f"  epoch {state.epoch + 1} step {step + 1}/{n_steps} loss {loss_sum.item() / state.seen:.4f} "
                  f"{rate:.0f} img/s epoch ETA {format_seconds((n_steps - step - 1) * run.cfg['batch_size'] / rate)}",
                  flush=True)
        if stop.requested:
            break
    seconds = time.time() - started
    state.loss_sum, state.correct = loss_sum.item(), correct.item()
    state.epoch_seconds += seconds
    state.train_seconds += seconds
    if status == "completed" and run.epoch_step < n_steps:
        status = "interrupted"
    return status


def _replay_point(run, epoch_step):
    """Copies of what replaying the epoch from step `epoch_step` needs (weights, optimizer, schedule, RNG)."""
    return copy.deepcopy(dict(epoch_step=epoch_step, global_step=run.state.global_step, model=run.model.state_dict(),
                              optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                              rng=rng_state(run.device), data_rng=run.gen.get_state(),
                              average=run.average and run.average.state_dict()))


def _locate_divergence(run, point, last_step):
    """Replays the steps from `point` to epoch step `last_step` and names the first tensor that turned
    non-finite: a module's output (in the order the forward pass finishes them), the loss, a parameter's
    gradient, or a parameter after the update. All steps are replayed, so the run ends in the state it
    diverged in. Returns dict(global_step (counted from 1), first_nonfinite) ("not reproduced" if none)."""
    for name, value in (("model", run.model), ("optimizer", run.optimizer), ("scheduler", run.scheduler)):
        value.load_state_dict(point[name])
    set_rng_state(point["rng"], run.device)
    run.gen.set_state(point["data_rng"])
    if run.average:
        run.average.load_state_dict(point["average"])
    names, found = {m: f"{n or 'the model'} ({type(m).__name__})" for n, m in run.model.named_modules()}, []

    def note(where):
        if not found:
            found.append(dict(global_step=point["global_step"] + step - point["epoch_step"] + 1, first_nonfinite=where))

    def check_output(module, _inputs, output):
        if torch.is_tensor(output) and not torch.isfinite(output).all():
            note(f"output of {names[module]}")

    def check_gradients(run, x, y, loss, _step):
        if not torch.isfinite(loss):
            note("the loss")
        bad = [n for n, p in run.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            note(f"gradient of {bad[0]}")

    hooks = [m.register_forward_hook(check_output) for m in run.model.modules()]
    try:
        for step in range(point["epoch_step"], last_step + 1):
            _train_step(run, step, check_gradients)
            bad = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                note(f"{bad[0]} after the update")
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else dict(global_step=None, first_nonfinite="not reproduced")


def _train_step(run, step, step_hook):
    """One optimizer step on batch `step` of the epoch's order; returns (loss, correct count, batch size)."""
    batch = run.cfg["batch_size"]
    idx = run.state.perm[step * batch:(step + 1) * batch].to(run.device)
    x = run.numerics.inputs(augment(run.train_x[idx], run.gen) if run.cfg["augment"] else run.train_x[idx])
    y = run.train_y[idx]
    with run.numerics.autocast(run.device):
        logits = run.forward(x)
    loss = run.criterion(logits.float(), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if step_hook is not None:
        step_hook(run, x, y, loss, run.state.global_step)
    run.optimizer.step()
    run.scheduler.step()
    if run.average:
        run.average.update(run.model)
    return loss, (logits.argmax(1) == y).sum(), len(y)


def _finish_epoch(run, stop):
    """Validate, record the epoch (metrics.jsonl, a printed line), write best.pt (new best val acc) and
    last.pt. Returns 'diverged' after --diverge-patience epochs stuck at chance, 'interrupted' or 'completed'."""
    cfg, state = run.cfg, run.state
    if cfg.get("save_trajectory"):
        _save_snapshot(run)
    val_loss, val_acc = evaluate(run.eval_model, run.val_x, run.val_y, run.criterion, run.device,
                                 numerics=run.numerics)
    state.epoch += 1
    m = dict(epoch=state.epoch, train_loss=state.loss_sum / state.seen, train_acc=state.correct / state.seen,
             val_loss=val_loss, val_acc=val_acc, lr=state.epoch_lr, img_per_s=state.seen / max(state.epoch_seconds, 1e-9),
             epoch_seconds=state.epoch_seconds, elapsed=state.train_seconds)
    state.stuck_epochs = state.stuck_epochs + 1 if is_stuck(m, state.history, cfg["num_classes"]) else 0
    state.history.append(m)
    state.perm = None
    if state.best_val_acc is None or val_acc > state.best_val_acc:
        state.best_val_acc, state.best_epoch = val_acc, state.epoch
        save_checkpoint(os.path.join(run.out, "best.pt"),
                        dict(model=run.eval_model.state_dict(), config=cfg, epoch=state.epoch, val_acc=val_acc))
    save_checkpoint(os.path.join(run.out, "last.pt"), run.checkpoint())
    with open(os.path.join(run.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(json_safe(m)) + "\n")
    run.session_epochs += 1
    eta = (time.time() - run.session_start) / run.session_epochs * (run.epochs - state.epoch)
    print(f"epoch {m['epoch']:3d}/{run.epochs} | train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} "
          f"| val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f} | lr at start {m['lr']:.2e} "
          f"| {m['img_per_s']:.0f} img/s "
          f"| {format_seconds(m['elapsed'])} elapsed, ETA {format_seconds(eta)}", flush=True)
    if 0 < cfg["diverge_patience"] <= state.stuck_epochs:
        print(f"train accuracy at chance and no new lowest loss for {state.stuck_epochs} epochs -> diverged",
              flush=True)
        return "diverged"
    return "interrupted" if stop.requested else "completed"


def is_stuck(epoch, history, num_classes):
    """An epoch that neither learned nor got closer to learning: train accuracy at chance (below 1.5 / classes)
    and a train loss no lower than every earlier epoch's by STUCK_LOSS_FALL. A loss still falling, however
    slowly from chance, is progress; a loss that is NaN or inf ends the run earlier, in train_epoch."""
    lowest = min((h["train_loss"] for h in history), default=math.inf)
    return epoch["train_acc"] < 1.5 / num_classes and not epoch["train_loss"] < lowest * (1 - STUCK_LOSS_FALL)


def _save_snapshot(run):
    """The weights after the current step, every parameter flattened into one float16 vector (2 bytes a
    parameter), as <run>/trajectory/step<global step>.pt; index.json names the parameters and their shapes.
    A step already saved (an epoch end that is also a multiple of K) is not written twice."""
    folder = os.path.join(run.out, TRAJECTORY_FOLDER)
    step = run.state.global_step
    path = os.path.join(folder, f"step{step:08d}.pt")
    if os.path.exists(path):
        return
    os.makedirs(folder, exist_ok=True)
    named = list(run.model.named_parameters())
    if not os.path.exists(os.path.join(folder, "index.json")):
        write_json(os.path.join(folder, "index.json"), dict(names=[n for n, _ in named],
                                                             shapes=[list(p.shape) for _, p in named], dtype="float16"))
    flat = torch.cat([p.detach().reshape(-1) for _, p in named]).to(torch.float16).cpu()
    save_checkpoint(path, dict(step=step, epoch=run.state.epoch, params=flat))


def _finish_run(run, status, signal_name=None):
    """last.pt, result.json (built here and only here) and curves.png; returns the result."""
    state, out = run.state, run.out
    save_checkpoint(os.path.join(out, "last.pt"), run.checkpoint())
    history = state.history
    result = dict(status=status, epochs_run=len(history), epochs=run.epochs, steps=run.total_steps,
                  best_val_acc=state.best_val_acc, best_epoch=state.best_epoch,
                  test_acc_at_best_val=None, test_loss_at_best_val=None, final_test_acc=None, final_test_loss=None,
                  final_val_acc=history[-1]["val_acc"] if history else None,
                  convergence_epoch=convergence_epoch(history), test_images=len(run.test_y),
                  params=count_params(run.model), weights_sha256=weights_digest(run.model),
                  train_seconds=state.train_seconds,
                  device=device_name(run.device), torch_version=torch.__version__, config=run.cfg)
    if status != "interrupted":
        result.update(_evaluate_test_set(run))
    if run.divergence:
        result["divergence"] = run.divergence
    result.update(wall_seconds=run.wall_seconds(), machine=_machine_name(run.device))
    write_json(os.path.join(out, "result.json"), result)
    if status == "interrupted":
        print(f"interrupted ({signal_name}) at epoch {state.epoch + 1}, step {run.epoch_step}; "
              f"state saved to {out}/last.pt", flush=True)
        return result
    if history:
        plot_curves(history, os.path.join(out, "curves.png"), title=describe(run.cfg))
    best, final = (("n/a" if result[k] is None else f"{result[k]:.4f}") for k in ("test_acc_at_best_val",
                                                                                   "final_test_acc"))
    if "tta" in result and "test_acc_at_best_val" in result["tta"]:
        best += f" ({result['tta']['kind']} TTA: {result['tta']['test_acc_at_best_val']:.4f})"
    test = "test set not read (--no-test)" if run.cfg.get("no_test") else \
        f"test acc at best val {best}, final test acc {final}"
    print(f"{status}: best val acc {result['best_val_acc']} at epoch {result['best_epoch']}, {test} | {out}",
          flush=True)
    return result


def _evaluate_test_set(run):
    """Test loss and accuracy of the last weights and of best.pt (the best validation epoch); with --tta also
    best.pt's validation and test accuracy under it, as `tta`. Under --no-test only the validation's TTA."""
    state, rest = run.state, (run.criterion, run.device, EVAL_BATCH, run.numerics)
    tested = len(run.test_y) > 0
    final, best, best_model = (evaluate(run.eval_model, run.test_x, run.test_y, *rest) if tested else (None, None),
                               (None, None), None)
    if state.best_epoch == state.epoch and run.epoch_step == 0:  # best.pt holds these very weights
        best, best_model = final, run.eval_model
    elif state.best_epoch is not None:
        best_model = run.numerics.place(load_checkpoint(os.path.join(run.out, "best.pt"))[0], run.device)
        best = evaluate(best_model, run.test_x, run.test_y, *rest) if tested else best
    result = dict(test_loss_at_best_val=best[0], test_acc_at_best_val=best[1],
                  final_test_loss=final[0], final_test_acc=final[1])
    if run.cfg["tta"] != "none" and best_model is not None:
        splits = [("val", run.val_x, run.val_y)] + [("test", run.test_x, run.test_y)] * tested
        result["tta"] = dict(kind=run.cfg["tta"], **{f"{split}_acc_at_best_val": evaluate(
            best_model, x, y, *rest, tta=run.cfg["tta"])[1] for split, x, y in splits})
    return result


def convergence_epoch(history):
    """The first epoch whose validation accuracy reaches 95% of the run's best (None before any epoch)."""
    if not history:
        return None
    best = max(m["val_acc"] for m in history)
    return next(m["epoch"] for m in history if m["val_acc"] >= CONVERGED_FRACTION * best)


# -- landscape core and gradient probe ---------------------------------------------------------

@contextlib.contextmanager
def preserved(model):
    """Parameters, buffers (BN running statistics included) and torch's RNG streams are put back on
    exit, so whatever runs inside leaves no trace on the model or on training."""
    tensors = [*model.parameters(), *model.buffers()]
    saved, rng = [t.detach().clone() for t in tensors], rng_state(tensors[0].device)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, kept in zip(tensors, saved):
                t.copy_(kept)
        set_rng_state(rng, tensors[0].device)


@torch.no_grad()
def _set_tensors(tensors, base, terms):
    """t = base + Σ scale * direction over terms [(scale, [direction per tensor]), ...], always from the
    saved base, so moving from point to point never drifts. A direction entry may be None (zero)."""
    for i, (t, b) in enumerate(zip(tensors, base)):
        t.copy_(b)
        for scale, direction in terms:
            if direction[i] is not None and scale != 0:
                t.add_(direction[i].to(t.dtype), alpha=scale)


def _tensors_norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def probe_along(model, loss_closure, etas, direction=None):
    """The probe of Santurkar et al. 2018 at the current weights θ. loss_closure() is the loss on one fixed
    batch (torch's RNG is reset before each call, so dropout draws one mask). Along d (per-parameter tensors;
    default d = −g, g = ∇L(θ)), for each step size η: L(θ + ηd), ‖∇L(θ) − ∇L(θ + ηd)‖ and that over ‖ηd‖ (β).
    The model (weights, BN statistics, RNG) is left as found. Returns floats loss, grad_norm, step_norm (‖d‖)
    and per-η lists losses, grad_dists, betas."""
    params = trainable(model)
    device = params[0].device
    with preserved(model):
        rng = rng_state(device)

        def loss_and_grad():
            set_rng_state(rng, device)
            loss = loss_closure()
            return loss.detach(), torch.autograd.grad(loss, params)

        theta = [p.detach().clone() for p in params]
        loss0, g = loss_and_grad()
        direction = [-t for t in g] if direction is None else direction
        losses, dists = [], []
        for eta in etas:
            _set_tensors(params, theta, [(eta, direction)])
            loss_eta, g_eta = loss_and_grad()
            losses.append(loss_eta)
            dists.append(_tensors_norm([a - b for a, b in zip(g, g_eta)]))
        norms = [_tensors_norm(g), _tensors_norm(direction)]
        values = torch.stack([loss0.double(), *norms] + [v.double() for v in losses + dists]).tolist()
    n = len(etas)
    loss0, g_norm, d_norm, losses, dists = values[0], values[1], values[2], values[3:3 + n], values[3 + n:]
    betas = [dist / (eta * d_norm) if eta * d_norm > 0 else float("nan") for dist, eta in zip(dists, etas)]
    return dict(loss=loss0, grad_norm=g_norm, step_norm=d_norm, losses=losses, grad_dists=dists, betas=betas)


def trajectory_plane(snapshots, final, chunk=1 << 20):
    """PCA of a training path (Li et al. 2018, §7): the rows θ_t − θ_final of the flat snapshots, centred as
    their code's sklearn PCA does. The Gram matrix (snapshots × snapshots, float64, built in column chunks)
    gives the components without a d × d matrix. Returns (two unit directions [2, d], each snapshot's
    coordinates [n, 2] = its θ_t − θ_final projected on them, their explained-variance ratios)."""
    diffs = torch.stack([s.float() - final.float() for s in snapshots])
    centred = diffs - diffs.mean(0)
    gram = torch.zeros(len(diffs), len(diffs), dtype=torch.float64)
    for block in centred.split(chunk, dim=1):
        gram += block.double() @ block.double().T
    all_values, vectors = torch.linalg.eigh(gram)
    all_values = all_values.clamp(min=0)
    values, vectors = all_values.flip(0)[:2], vectors.flip(1)[:, :2]
    directions = torch.stack([(vectors[:, k].float() @ centred) / max(float(values[k].sqrt()), 1e-30)
                              for k in range(2)])  # float32 products: no float64 copy of the snapshots
    explained = values / max(float(all_values.sum()), 1e-300)
    return directions, (diffs @ directions.T).double().numpy(), explained.numpy()


def landscape_tensors(model):
    """(name, tensor) of every parameter and float buffer (BN running statistics): what a point sets."""
    return list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def random_direction(model, generator, norm="filter", include_bn_bias=False):
    """A Gaussian {name: tensor} per parameter, drawn on the CPU (one seed, one direction on any device).
    norm='filter' scales each filter (slice along dim 0) to the weights' filter norm, 'layer' each tensor to
    its norm, 'none' keeps it raw. dim <= 1 (biases, BN): zero, or with include_bn_bias the weights."""
    direction = {}
    for name, w in model.named_parameters():
        w = w.detach().float().cpu()
        d = torch.randn(w.shape, generator=generator)
        if w.dim() <= 1:  # as Li et al.'s code: zero, or the weights themselves (one value per "filter")
            d = w.clone() if include_bn_bias else d.zero_()
        elif norm == "filter":
            rows, w_rows = d.view(len(d), -1), w.reshape(len(w), -1)
            rows.mul_((w_rows.norm(dim=1) / (rows.norm(dim=1) + 1e-10))[:, None])
        elif norm == "layer":
            d.mul_(w.norm() / (d.norm() + 1e-10))
        elif norm != "none":
            raise ValueError(f"unknown norm {norm!r}; known: {NORMS}")
        direction[name] = d
    return direction


def direction_list(model, direction, device):
    """{name: tensor} -> list in landscape_tensors order on the device (None: zero); ValueError if it misfits."""
    tensors = dict(landscape_tensors(model))
    unknown = sorted(set(direction) - set(tensors))
    missing = sorted(n for n, _ in model.named_parameters() if n not in direction)
    wrong = sorted(n for n, d in direction.items() if n in tensors and tuple(d.shape) != tuple(tensors[n].shape))
    if unknown or missing or wrong:
        raise ValueError(f"direction does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}, "
                         f"wrong shape {wrong[:3]}")
    return [direction[n].to(device) if n in direction else None for n, _ in landscape_tensors(model)]


@torch.no_grad()
def _reestimate_bn(model, images, device, batch_size=EVAL_BATCH, numerics=FP32):
    """BN running statistics recomputed on `images` (a cumulative average over batches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i in range(0, len(images), batch_size):
        with numerics.autocast(device):
            model(numerics.inputs(images[i:i + batch_size]))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def evaluate_at(model, base, terms, images, labels, criterion, device, numerics=FP32, bn_mode="eval",
                batch_size=EVAL_BATCH):
    """The one "model at θ + δ" evaluation: every landscape tensor = base + Σ scale·direction (no drift), BN
    statistics re-estimated on the images if bn_mode='train'; (loss, acc) in eval mode. See `preserved`."""
    _set_tensors([t for _, t in landscape_tensors(model)], base, terms)
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.running_var.clamp_(min=0)  # extrapolating (interpolation beyond [0, 1]) can give a negative variance
    if bn_mode == "train":
        _reestimate_bn(model, images, device, batch_size, numerics)
    return evaluate(model, images, labels, criterion, device, batch_size, numerics)


def rank_and_world():
    """(rank, world size) under torch.distributed, else (0, 1)."""
    dist = torch.distributed
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def compute_surface(model, base, axes, images, labels, criterion, device, surface, save, numerics=FP32,
                    bn_mode="eval", batch_size=EVAL_BATCH, stop=None, round_size=8):
    """Fill surface['loss'/'acc'] (flat, row-major: point k is (x[k // ny], y[k % ny])) where surface['done']
    is False. axes: [(coordinates, direction list)] for x and, in 2D, y. Under torch.distributed each rank
    takes every world-th pending point and the ranks sum each round's results; save(surface) runs on rank 0
    after every round. stop.requested ends after the current round (resumable); returns whether all done."""
    rank, world = rank_and_world()
    shape, pending = [len(c) for c, _ in axes], np.flatnonzero(~surface["done"]).tolist()
    for start in range(0, len(pending), round_size * world):
        chunk = pending[start:start + round_size * world]
        values = torch.zeros(3, len(chunk), dtype=torch.float64, device=device)  # loss, acc, done
        for j in range(rank, len(chunk), world):
            index = np.unravel_index(chunk[j], shape)
            terms = [(coords[i], direction) for (coords, direction), i in zip(axes, index)]
            values[0, j], values[1, j] = evaluate_at(model, base, terms, images, labels, criterion, device,
                                                     numerics, bn_mode, batch_size)
            values[2, j] = 1
        halt = torch.tensor([float(stop is not None and stop.requested)], device=device)
        if world > 1:
            torch.distributed.all_reduce(values)
            torch.distributed.all_reduce(halt)  # every rank stops after the same round
        values = values.cpu().numpy()
        surface["loss"][chunk], surface["acc"][chunk], surface["done"][chunk] = values[0], values[1], values[2] > 0
        if rank == 0:
            save(surface)
        if halt.item() > 0:
            return False
    return True


def lanczos(matvec, start, iters):
    """Lanczos with full reorthogonalization from `start`. After each step yields (Ritz values, eigenvectors of
    the tridiagonal T_j, β_j): β_j · |last component| is the residual ‖Hv − λv‖ of each Ritz pair, and the
    squared first components are the weights of Lanczos quadrature. Stops early when the Krylov space is
    exhausted (β ≈ 0)."""
    basis = torch.zeros(iters + 1, start.numel(), dtype=start.dtype, device=start.device)
    basis[0] = start / start.norm()
    alphas, betas = [], []
    for j in range(iters):
        w = matvec(basis[j])
        alphas.append(float(w.double() @ basis[j].double()))
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta = float(w.norm())
        off = torch.tensor(betas, dtype=torch.float64)
        ritz, vectors = torch.linalg.eigh(torch.diag(torch.tensor(alphas, dtype=torch.float64)) + off.diag(1)
                                          + off.diag(-1))
        yield ritz, vectors, beta
        if beta <= 1e-10 * max(float(ritz.abs().max()), 1e-30):
            return
        betas.append(beta)
        basis[j + 1] = w / beta


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


HESSIAN_COORDS = ["raw", "filter"]


def filter_scales(params):
    """The diagonal D of filter-normalized coordinates, flat: each entry of a filter (a slice along dim 0 of a
    tensor with dim >= 2) scaled by that filter's norm, each entry of a 1-D tensor (bias, BN) by its own
    magnitude (one value a filter, as Li et al. treat them). D·H·D is the curvature along the directions the
    surfaces use, and unchanged when a filter that feeds a BN is scaled (the raw block scales by 1/c²)."""
    pieces = []
    for p in params:
        w = p.detach()
        rows = w.reshape(len(w), -1) if w.dim() > 1 else w.reshape(-1, 1)
        norms = rows.norm(dim=1, keepdim=True) if w.dim() > 1 else rows.abs()
        pieces.append(norms.expand_as(rows).reshape(-1))
    return torch.cat(pieces)


def hessian_operator(params, batch_losses, n_items, coords="raw"):
    """v -> H·v of the mean loss over `params` (the others held fixed: a diagonal block of H); coords 'filter':
    v -> D·H·D·v with D = filter_scales(params)."""
    product = HessianVectorProduct(params, batch_losses, n_items)
    if coords == "raw":
        return product
    if coords != "filter":
        raise ValueError(f"unknown Hessian coordinates {coords!r}; known: {HESSIAN_COORDS}")
    scales = filter_scales(params)
    return lambda vector: scales * product(scales * vector)


def flat_size(params):
    return sum(p.numel() for p in params)


def hessian_extremes(model, batch_losses, n_items, iters=20, tol=1e-3, seed=0, params=None, coords="raw",
                     extreme="both", on_step=None):
    """Largest and smallest (most negative) Hessian eigenvalue of the mean loss (over `params`, default every
    trainable one): Lanczos on Hessian-vector products. batch_losses() yields each batch's summed loss, n_items
    their count. Stops when the Ritz residuals ‖Hv − λv‖ (exact for Lanczos) of the extremes asked for
    (extreme 'both' or 'top') are ≤ tol·max|λ|, or when the Krylov space is exhausted; coords 'filter': of
    D·H·D (hessian_operator). on_step(iteration, top Ritz value), when given, is called after every step (the
    bench times how soon the top reaches another method's answer). Returns dict(top, bottom, residual_top,
    residual_bottom, converged, iterations)."""
    if extreme not in ("both", "top"):
        raise ValueError(f"extreme must be 'both' or 'top', not {extreme!r}")
    params = params or trainable(model)
    start = torch.randn(flat_size(params), generator=torch.Generator().manual_seed(seed))
    start = start.to(dtype=params[0].dtype, device=params[0].device)
    operator = hessian_operator(params, batch_losses, n_items, coords)
    for j, (ritz, vectors, beta) in enumerate(lanczos(operator, start, iters)):
        if on_step:
            on_step(j + 1, float(ritz[-1]))
        residuals = (beta * vectors[-1]).abs()
        scale = max(float(ritz.abs().max()), 1e-30)
        asked = residuals[-1] if extreme == "top" else max(residuals[0], residuals[-1])
        converged = beta <= 1e-10 * scale or asked <= tol * scale
        if converged or j == iters - 1:
            return dict(top=float(ritz[-1]), bottom=float(ritz[0]), residual_top=float(residuals[-1]),
                        residual_bottom=float(residuals[0]), converged=bool(converged), iterations=j + 1)


def rademacher(size, generator, like):
    """±1 entries drawn straight in `like`'s dtype (the same draws as an int64 vector, without its 8 bytes an
    entry and the conversion: at full width that was most of a trace probe's time beside its product)."""
    return torch.randint(0, 2, (size,), generator=generator, dtype=like.dtype).mul_(2).sub_(1).to(like.device)


def hessian_spectrum(model, batch_losses, n_items, probes=4, steps=30, seed=0, params=None, coords="raw"):
    """Stochastic Lanczos quadrature (Lin et al. 2016; Ghorbani et al. 2019): for each of `probes` Rademacher
    vectors v, `steps` Lanczos steps give nodes λ_i (Ritz values) and weights w_i (squared first components),
    with Σ w_i λ_i^k = vᵀH^k v / vᵀv exactly for k < 2·steps. Returns [(nodes, weights)] as numpy arrays."""
    params, generator = params or trainable(model), torch.Generator().manual_seed(seed)
    operator, spectrum = hessian_operator(params, batch_losses, n_items, coords), []
    for _ in range(probes):
        *_, (ritz, vectors, _) = lanczos(operator, rademacher(flat_size(params), generator, params[0]), steps)
        spectrum.append((ritz.numpy(), (vectors[0] ** 2).numpy()))
    return spectrum


def hessian_trace(model, batch_losses, n_items, probes=16, seed=0, params=None, coords="raw"):
    """Hutchinson's estimator of tr(H) (coords 'filter': of D·H·D): the mean of vᵀHv over Rademacher v, with
    its standard error (sample std / √probes). Returns dict(trace, stderr, probes)."""
    params, generator = params or trainable(model), torch.Generator().manual_seed(seed)
    operator = hessian_operator(params, batch_losses, n_items, coords)
    samples = []
    for _ in range(probes):
        v = rademacher(flat_size(params), generator, params[0])
        samples.append(float((v * operator(v)).sum(dtype=torch.float64)))  # v is ±1: each term exact, summed in fp64
    stderr = statistics.stdev(samples) / math.sqrt(probes) if probes > 1 else math.nan
    return dict(trace=statistics.mean(samples), stderr=stderr, probes=probes)


def parameter_blocks(model):
    """[(name, parameters)]: each layer with parameters in the model's features and classifier, a BatchNorm
    joined to the layer before it (VGG-A's conv + BN; a ResVGG16 residual block is one block)."""
    blocks = []
    for part in ("features", "classifier"):
        for name, module in getattr(model, part).named_children():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and blocks and blocks[-1][0].startswith(part):
                blocks[-1] = (f"{blocks[-1][0]}+{name}", blocks[-1][1] + params)
            else:
                blocks.append((f"{part}.{name}", params))
    return blocks


def density_curves(density, points=1000):
    """(grid, σ, one smoothed density per seed) of surface.json's 'density' entry (nodes and weights per seed
    and probe): σ is 1/200 of the nodes' range, the grid spans it with 10 σ on each side."""
    spectra = [[(np.array(n), np.array(w)) for n, w in zip(nodes, weights)]
               for nodes, weights in zip(density["nodes"], density["weights"])]
    every = np.concatenate([n for spectrum in spectra for n, _ in spectrum])
    sigma = max(float(np.ptp(every)), 1e-12) / 200
    grid = np.linspace(every.min() - 10 * sigma, every.max() + 10 * sigma, points)
    return grid, sigma, [spectral_density(spectrum, grid, sigma) for spectrum in spectra]


def spectral_density(spectrum, grid, sigma):
    """The Gaussian-smoothed eigenvalue density of an SLQ spectrum on `grid`, the mean over its probes."""
    grid = np.asarray(grid, dtype=np.float64)
    return np.mean([(w[:, None] * np.exp(-(grid[None] - nodes[:, None]) ** 2 / (2 * sigma ** 2))).sum(0)
                    for nodes, w in spectrum], axis=0) / (sigma * math.sqrt(2 * math.pi))


class HessianVectorProduct:
    """vector -> H·vector for the mean loss, flat, summed over batch_losses()'s batches (double backward). When
    batch_losses says it yields one batch (batch_losses.batches == 1) that batch's gradient graph is built once
    and kept for every later product, as PyHessian does for one batch: each product is then one backward pass
    instead of a forward and two, at the peak memory one product needs anyway. Else every product rebuilds the
    batches' graphs one at a time."""

    def __init__(self, params, batch_losses, n_items):
        self.params, self.batch_losses, self.n_items = params, batch_losses, n_items
        self.keep, self.kept = getattr(batch_losses, "batches", None) == 1, None

    def __call__(self, vector):
        pieces = [t.view_as(p) for t, p in zip(vector.split([p.numel() for p in self.params]), self.params)]
        out = None  # the first batch's product itself: no zero vector to add it to (one batch: nothing to add)
        for grads in [self.kept] if self.kept is not None else self._gradients():
            product = torch.cat([h.reshape(-1) for h in torch.autograd.grad(grads, self.params, grad_outputs=pieces,
                                                                            retain_graph=self.keep)])
            out = product if out is None else out.add_(product)
        return out

    def _gradients(self):
        for loss in self.batch_losses():
            grads = torch.autograd.grad(loss / self.n_items, self.params, create_graph=True)
            if self.keep:
                self.kept = grads
            yield grads


# -- tables and figures: one cell format and one axis rule for all ----------------------------

def short_number(v):
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def seeds_cell(values, scale=1.0, digits=None):
    """One table cell over seeds: the value, or mean ± sample std (n=N) of the finite ones; '–' when none is
    finite. digits: fixed decimals, else 4 significant digits."""
    values = [scale * v for v in values if v is not None and math.isfinite(v)]
    show = (lambda v: f"{v:.{digits}f}") if digits is not None else short_number
    if len(values) < 2:
        return show(values[0]) if values else "–"
    return f"{show(statistics.mean(values))} ± {show(statistics.stdev(values))} (n={len(values)})"


def spans_decades(values, decades=2):
    """Whether the finite positive values span more than `decades` decades: every figure then goes log."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and v.max() > 10 ** decades * v.min()


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=120, tight=True):
    """Write a figure and free it: every figure in the repository is saved through here."""
    if tight:
        fig.tight_layout()
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)


def plot_curves(history, path, title=""):
    """Loss and accuracy per epoch, train and validation, side by side."""
    plt = pyplot()
    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], marker=".", label=split)
        ax_acc.plot(epochs, [100 * m[f"{split}_acc"] for m in history], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
