"""Everything the task scripts share, top to bottom:

data · models · losses and optimizers · train / evaluate / checkpoint · landscape and BN probes ·
plotting · report

The scripts in task1/ and task2/ only parse flags and call into this file. There is exactly one
training loop (`train`) and one evaluation routine (`evaluate`) for the whole repository.
"""
import argparse
import contextlib
import json
import math
import os
import pickle
import re
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
VAL_SPLIT_SEED = 0  # the validation split is the same for every run, whatever --seed is


class DataError(Exception):
    """A problem with the dataset files; the scripts print it as one line, without a traceback."""


def default_data_dir():
    return os.environ.get("CIFAR10_DIR", "data")


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


def read_cifar_batch(path):
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
    train = [read_cifar_batch(os.path.join(folder, name)) for name in CIFAR10_TRAIN_FILES]
    test_x, test_y = read_cifar_batch(os.path.join(folder, CIFAR10_TEST_FILE))
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta.get("label_names", [])]
    return dict(train_x=torch.cat([x for x, _ in train]), train_y=torch.cat([y for _, y in train]),
                test_x=test_x, test_y=test_y, classes=classes or [str(i) for i in range(10)])


def split_train_val(x, y, n_val, subset=0):
    """Hold out n_val images (at most a tenth of those given) with a fixed seed; `subset` keeps the
    first N of the remaining training images."""
    n_val = min(n_val, len(y) // 10)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if subset:
        train_idx = train_idx[:subset]
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def augment(images, gen):
    """Random crop with 4 pixels of zero padding and a random horizontal flip, for a whole uint8 batch
    on its device. Random numbers come from the CPU generator `gen`, so every device sees the same ones."""
    n, c, h, w = images.shape
    device = images.device
    shifts = torch.randint(0, 9, (2, n), generator=gen).to(device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(device)
    padded = F.pad(images, (4, 4, 4, 4))
    rows = shifts[0, :, None] + torch.arange(h, device=device)
    cols = shifts[1, :, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reverses the column order
    return padded[torch.arange(n, device=device)[:, None, None, None],
                  torch.arange(c, device=device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images, channels_last=False):
    """uint8 [N, 3, H, W] -> float, standardized with the CIFAR-10 mean/std."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
RESVGG16_ARCHS = {  # stage channels, hidden FC widths
    "standard": ([64, 128, 256, 512, 512], [4096, 4096]),
    "light": ([32, 64, 128, 256, 256], [1024, 512]),
}
RESVGG16_BLOCKS = [2, 2, 3, 3, 3]


def conv_bn_act(c_in, c_out, act):
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


def mlp_classifier(c_in, hidden, num_classes, act, dropout):
    layers = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(c_in, h), act(), nn.Dropout(dropout)]
        c_in = h
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*layers)


class ResVGG16(nn.Module):
    """The report's ResVGG16: stem conv-BN-act, five stages of [2, 2, 3, 3, 3] blocks each followed by a
    2x2 max-pool, global average pool, MLP classifier with dropout. residual=False gives plain VGG16
    (one conv-BN-act per block, 13 convs)."""

    def __init__(self, arch="standard", act="relu", residual=True, width=1.0, dropout=0.5, num_classes=10):
        super().__init__()
        channels, hidden = RESVGG16_ARCHS[arch]
        channels = [scaled(c, width) for c in channels]
        hidden = [scaled(h, width) for h in hidden]
        act_cls = ACTIVATIONS[act]
        block = ResidualBlock if residual else conv_bn_act
        layers = [conv_bn_act(3, channels[0], act_cls)]
        c_in = channels[0]
        for c_out, n_blocks in zip(channels, RESVGG16_BLOCKS):
            for _ in range(n_blocks):
                layers.append(block(c_in, c_out, act_cls))
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = mlp_classifier(c_in, hidden, num_classes, act_cls, dropout)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def scaled(n, width):
    return max(1, round(n * width))


VGG_A_STAGES = [[64], [128], [256, 256], [512, 512], [512, 512]]


class VGGA(nn.Module):
    """The course's VGG-A for 32x32 input: conv3x3 + act stages 64 | 128 | 256,256 | 512,512 | 512,512,
    a 2x2 max-pool after each stage, classifier 512-512-512-10. bn=True puts BatchNorm after every conv
    and changes nothing else (a clean ablation); residual=True builds each conv as a residual block
    (the report's VGG-A-Res-BN). Xavier-normal weights, zero biases, BN weight 1 and bias 0."""

    def __init__(self, bn=False, residual=False, act="relu", width=1.0, dropout=0.0, num_classes=10):
        super().__init__()
        act_cls = ACTIVATIONS[act]
        layers, c_in = [], 3
        for stage in VGG_A_STAGES:
            for c_out in (scaled(c, width) for c in stage):
                if residual:
                    layers.append(ResidualBlock(c_in, c_out, act_cls))
                else:
                    layers += [nn.Conv2d(c_in, c_out, 3, padding=1)]
                    layers += [nn.BatchNorm2d(c_out)] if bn else []
                    layers.append(act_cls())
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        hidden = scaled(512, width)
        self.classifier = mlp_classifier(c_in, [hidden, hidden], num_classes, act_cls, dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(cfg):
    """The model a config describes; `cfg` is the dict stored in config.json and in every checkpoint."""
    name = cfg["model"]
    if name == "resvgg16":
        return ResVGG16(cfg["arch"], cfg["act"], cfg["residual"], cfg["width"], cfg["dropout"],
                        cfg["num_classes"])
    if name in ("vgg_a", "vgg_a_bn", "vgg_a_res_bn"):
        return VGGA(bn=name != "vgg_a", residual=name == "vgg_a_res_bn", act=cfg["act"], width=cfg["width"],
                    dropout=cfg["dropout"], num_classes=cfg["num_classes"])
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


MODELS = ["resvgg16", "vgg_a", "vgg_a_bn", "vgg_a_res_bn"]


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# losses and optimizers
# ----------------------------------------------------------------------------------------------

LOSSES = ["ce", "nll", "mse"]
OPTIMIZERS = ["sgd", "adam", "adamw", "sgd_scratch"]
DEFAULT_LR = {"sgd": 0.01, "sgd_scratch": 0.01, "adam": 1e-4, "adamw": 1e-4}
DEFAULT_WD = {"sgd": 5e-4, "sgd_scratch": 5e-4, "adam": 0.0, "adamw": 1e-2}
TASK2_LR = {"sgd": 0.01, "sgd_scratch": 0.01, "adam": 1e-3, "adamw": 1e-3}
TASK2_DEFAULTS = dict(model="vgg_a", opt="adam", epochs=20, dropout=0.0)


def loss_fn(name, label_smoothing=0.0):
    """logits, targets -> mean loss. 'nll' is log_softmax + NLLLoss, the same function as 'ce';
    'mse' compares softmax probabilities with one-hot targets."""
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if name == "nll":
        return lambda logits, y: F.nll_loss(F.log_softmax(logits, dim=1), y)
    if name == "mse":
        return lambda logits, y: F.mse_loss(logits.softmax(dim=1), F.one_hot(y, logits.shape[1]).to(logits.dtype))
    raise ValueError(f"unknown loss {name!r}; known: {LOSSES}")


class ScratchSGD(torch.optim.Optimizer):
    """Momentum SGD with L2 weight decay, written out by hand; the same update as torch.optim.SGD:
    d = g + wd*p;  buf = momentum*buf + d (buf = d on the first step);  p -= lr * (d + momentum*buf
    if nesterov else buf)."""

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
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                    buf = state["momentum_buffer"]
                    d = d.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(d, alpha=-group["lr"])


def make_optimizer(cfg, params):
    name, lr, wd = cfg["opt"], cfg["lr"], cfg["wd"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd, nesterov=cfg["nesterov"])
    if name == "sgd_scratch":
        return ScratchSGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd, nesterov=cfg["nesterov"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")


def cosine_schedule(optimizer, total_steps):
    """Cosine annealing from the base lr to 0 over the whole run, stepped once per batch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


# ----------------------------------------------------------------------------------------------
# train / evaluate / checkpoint
# ----------------------------------------------------------------------------------------------

# keys of the config that do not change what is trained, so --resume may take new values for them
RUNTIME_KEYS = {"data_dir", "no_download", "device", "compile", "out", "resume", "overwrite"}
EVAL_BATCH = 1000
LOSS_CHECK_EVERY = 20  # steps between checks of the loss on the host (each check syncs a GPU)
PROGRESS_EVERY_S = 30.0


def add_train_args(parser, default_lr=None):
    """The flags of every training script (task1/train.py, task2/train.py, task2/bn_analysis.py);
    a script changes defaults with parser.set_defaults and passes its own per-optimizer lr table."""
    default_lr = default_lr or DEFAULT_LR
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="resvgg16", choices=MODELS,
                   help="resvgg16 (Task 1), vgg_a, vgg_a_bn, vgg_a_res_bn (Task 2)")
    g.add_argument("--arch", default="standard", choices=sorted(RESVGG16_ARCHS),
                   help="ResVGG16 widths: standard [64..512] + FC 4096x2, light [32..256] + FC 1024/512")
    g.add_argument("--act", default="relu", choices=sorted(ACTIVATIONS), help="activation everywhere")
    g.add_argument("--no-residual", dest="residual", action="store_false",
                   help="plain VGG16: one conv-BN-act per block instead of a residual block")
    g.add_argument("--width", type=float, default=1.0, help="multiplies every channel and FC width")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout in the classifier")
    g = parser.add_argument_group("loss and optimizer")
    g.add_argument("--loss", default="ce", choices=LOSSES, help="ce, nll (log_softmax+NLLLoss), mse (softmax vs one-hot)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing for --loss ce")
    g.add_argument("--opt", default="sgd", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {default_lr})")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    g.add_argument("--wd", type=float, default=None, help=f"weight decay (default {DEFAULT_WD})")
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--batch-size", type=int, default=128)
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", default=default_data_dir(),
                   help="folder holding cifar-10-batches-py/ (default $CIFAR10_DIR or ./data)")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    g.add_argument("--val", type=int, default=5000,
                   help="training images held out for validation (at most a tenth of them)")
    g.add_argument("--subset", type=int, default=0, help="train on the first N remaining training images (0: all)")
    g.add_argument("--test-subset", type=int, default=0, help="test on the first N test images (0: all)")
    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    g.add_argument("--seed", type=int, default=0, help="initialization, data order and augmentation")
    g.add_argument("--diverge-patience", type=int, default=5,
                   help="stop as diverged after this many epochs at chance accuracy with a flat loss (0: never)")
    g.add_argument("--out", default=None, help="run folder (default runs/<name from the config>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    return parser


def config_from_args(args, default_lr=None):
    cfg = vars(args).copy()
    cfg["lr"] = (default_lr or DEFAULT_LR)[cfg["opt"]] if cfg["lr"] is None else cfg["lr"]
    cfg["wd"] = DEFAULT_WD[cfg["opt"]] if cfg["wd"] is None else cfg["wd"]
    if cfg["label_smoothing"] and cfg["loss"] != "ce":
        raise SystemExit("error: --label-smoothing applies to --loss ce only")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["width"] <= 0:
        raise SystemExit("error: --epochs, --batch-size and --width must be positive")
    cfg["num_classes"] = 10
    cfg["out"] = cfg["out"] or os.path.join("runs", run_name(cfg))
    return cfg


def run_name(cfg):
    arch = [cfg["arch"]] if cfg["model"] == "resvgg16" else []
    parts = [cfg["model"], *arch, cfg["act"], cfg["loss"], cfg["opt"], f"lr{cfg['lr']:g}"]
    if not cfg["residual"]:
        parts.append("plain")
    if cfg["width"] != 1:
        parts.append(f"w{cfg['width']:g}")
    if cfg["subset"]:
        parts.append(f"n{cfg['subset']}")
    return "_".join(parts + [f"s{cfg['seed']}"])


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def autocast(device, bf16=True):
    """bf16 autocast on CUDA (unless bf16=False); full fp32 on CPU."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, images, labels, criterion, device, batch_size=EVAL_BATCH, bf16=True):
    """Mean loss and accuracy of `model` in eval mode on uint8 images (no augmentation)."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for i in range(0, len(labels), batch_size):
        x = normalize(images[i:i + batch_size], channels_last=device.type == "cuda")
        y = labels[i:i + batch_size]
        with autocast(device, bf16):
            logits = model(x)
        loss_sum += criterion(logits.float(), y).double() * len(y)
        correct += (logits.argmax(1) == y).sum()
    n = max(len(labels), 1)
    return loss_sum.item() / n, correct.item() / n


def rng_state(device):
    """torch's CPU RNG state and, on CUDA, the device's (None on CPU)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda" and state[1] is not None:  # a CPU checkpoint resumed on CUDA has none
        torch.cuda.set_rng_state(state[1], device)


def save_checkpoint(path, payload):
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """(model rebuilt from the checkpoint's own config, with its weights; the checkpoint dict)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(json_safe(obj), f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(run_dir):
    """metrics.jsonl of a run folder as a list of per-epoch dicts."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def json_safe(obj):
    """NaN and inf become null, so every JSON file opens in any tool."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class GracefulStop:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current step; a second
    Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.signal_name = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after the current step ...", flush=True)


def prepare_run_dir(cfg):
    out = cfg["out"]
    last = os.path.join(out, "last.pt")
    if cfg["resume"]:
        if not os.path.exists(last):
            raise SystemExit(f"error: --resume but {last} does not exist")
    elif os.path.exists(last) and not cfg["overwrite"]:
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it "
                         "or --overwrite to start over")
    os.makedirs(out, exist_ok=True)


def train_main(script, argv=None, defaults=None, default_lr=None):
    """What `python task*/train.py` does: parse flags, train, turn errors into one line. Returns the exit code."""
    parser = add_train_args(argparse.ArgumentParser(description=f"Train one configuration on CIFAR-10 ({script})."),
                            default_lr)
    parser.set_defaults(**(defaults or {}))
    cfg = config_from_args(parser.parse_args(argv), default_lr)
    try:
        result = train(cfg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["status"] == "interrupted":
        print(f"Resume with:\n  python {script} --out {cfg['out']} --resume", flush=True)
        return 130
    return 0


def train(cfg, step_hook=None):
    """Train the model `cfg` describes; writes the run folder and returns result.json's dict.

    The one training loop of the repository. State that makes a run reproducible and resumable:
    torch's global RNG (initialization, dropout) seeded by cfg['seed'], and a CPU generator for the
    data order and augmentation. last.pt holds both, mid-epoch if interrupted.
    step_hook(model, x, y, loss, step), if given, runs after the backward pass and before the optimizer
    step of every batch (Task 2's probes); it must leave the model as it found it."""
    prepare_run_dir(cfg)
    out = cfg["out"]
    device = resolve_device(cfg["device"])
    if cfg["resume"]:
        ckpt = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
        changed = {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS and ckpt["config"].get(k) != v}
        if changed:
            print(f"note: --resume keeps the saved config; ignoring {sorted(changed)}")
        cfg = {**ckpt["config"], **{k: cfg[k] for k in RUNTIME_KEYS}}
    else:
        ckpt = None
        write_json(os.path.join(out, "config.json"), cfg)

    data = load_cifar10(cfg["data_dir"], download=not cfg["no_download"])
    (train_x, train_y), (val_x, val_y) = split_train_val(data["train_x"], data["train_y"], cfg["val"], cfg["subset"])
    train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    n_test = cfg.get("test_subset") or None
    test_x, test_y = data["test_x"][:n_test].to(device), data["test_y"][:n_test].to(device)
    n_train = len(train_y)
    if n_train == 0 or len(val_y) == 0:
        raise SystemExit(f"error: {n_train} training and {len(val_y)} validation images; both must be non-empty "
                         "(check --val and --subset)")
    # the last partial batch of each epoch is dropped (a fresh order every epoch, so no image is left out
    # for good): a batch of a few images would give BN noisy statistics and the loss a spike
    steps_per_epoch = max(1, n_train // cfg["batch_size"])

    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    model = build_model(cfg)
    channels_last = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model) if cfg["compile"] else model
    criterion = loss_fn(cfg["loss"], cfg["label_smoothing"])
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = cosine_schedule(optimizer, cfg["epochs"] * steps_per_epoch)
    n_params = count_params(model)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{run_name(cfg)}: {n_params:,} parameters | {n_train} train / {len(val_y)} val / "
          f"{len(test_y)} test images | {device_name} | out {out}", flush=True)

    # progress state, all of it in last.pt
    state = dict(epoch=0, step=0, perm=None, loss_sum=0.0, correct=0, seen=0, epoch_seconds=0.0,
                 train_seconds=0.0, best_val_acc=None, best_epoch=None, stuck_epochs=0, history=[])
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state((ckpt["torch_rng"], ckpt["cuda_rng"]), device)
        gen.set_state(ckpt["data_rng"])
        state.update(ckpt["progress"])
        print(f"resumed from {out}/last.pt at epoch {state['epoch'] + 1}, step {state['step']}", flush=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:  # rewritten so it matches last.pt exactly
        f.writelines(json.dumps(json_safe(m)) + "\n" for m in state["history"])

    def checkpoint_payload():
        torch_rng, cuda_rng = rng_state(device)
        return dict(model=model.state_dict(), config=cfg, epoch=state["epoch"], optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), torch_rng=torch_rng, cuda_rng=cuda_rng, data_rng=gen.get_state(),
                    progress=dict(state))

    status = "completed"
    session_start, epochs_this_session = time.time(), 0
    with GracefulStop() as stop:
        while state["epoch"] < cfg["epochs"] and status == "completed":
            if state["step"] == 0:
                state["perm"] = torch.randperm(n_train, generator=gen)
                state.update(loss_sum=0.0, correct=0, seen=0, epoch_seconds=0.0)
            model.train()
            loss_sum = torch.tensor(state["loss_sum"], device=device, dtype=torch.float64)
            correct = torch.tensor(state["correct"], device=device, dtype=torch.int64)
            t0, last_print = time.time(), time.time()
            for step in range(state["step"], steps_per_epoch):
                idx = state["perm"][step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]].to(device)
                x = normalize(augment(train_x[idx], gen), channels_last)
                y = train_y[idx]
                with autocast(device):
                    logits = forward(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step_hook is not None:
                    step_hook(forward, x, y, loss, state["epoch"] * steps_per_epoch + step)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach().double() * len(y)
                correct += (logits.argmax(1) == y).sum()
                state["seen"] += len(y)
                state["step"] = step + 1
                stopping = stop.requested
                if (step + 1) % LOSS_CHECK_EVERY == 0 or step + 1 == steps_per_epoch or stopping:
                    # a running sum is non-finite as soon as one loss was
                    if not math.isfinite(loss_sum.item()):
                        status = "diverged"
                        print(f"epoch {state['epoch'] + 1} step {step + 1}: loss is not finite -> diverged", flush=True)
                        break
                    if time.time() - last_print > PROGRESS_EVERY_S:
                        last_print = time.time()
                        rate = state["seen"] / (state["epoch_seconds"] + last_print - t0)
                        print(f"  epoch {state['epoch'] + 1} step {step + 1}/{steps_per_epoch} "
                              f"loss {loss_sum.item() / state['seen']:.4f} {rate:.0f} img/s "
                              f"epoch ETA {format_seconds((n_train - state['seen']) / rate)}", flush=True)
                if stopping:
                    break
            state.update(loss_sum=loss_sum.item(), correct=correct.item(),
                         epoch_seconds=state["epoch_seconds"] + time.time() - t0)
            state["train_seconds"] += time.time() - t0
            if stop.requested and status == "completed" and state["step"] < steps_per_epoch:
                status = "interrupted"
                break
            if status == "diverged":
                break
            gave_up = finish_epoch(cfg, state, model, criterion, device, val_x, val_y,
                                   optimizer.param_groups[0]["lr"], checkpoint_payload)
            epochs_this_session += 1
            m = state["history"][-1]
            eta = (time.time() - session_start) / epochs_this_session * (cfg["epochs"] - state["epoch"])
            print(f"epoch {m['epoch']:3d}/{cfg['epochs']} | train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} "
                  f"| val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f} | lr {m['lr']:.2e} | {m['img_per_s']:.0f} img/s "
                  f"| {format_seconds(m['elapsed'])} elapsed, ETA {format_seconds(eta)}", flush=True)
            with open(os.path.join(out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(json_safe(m)) + "\n")
            if gave_up:
                status = "diverged"
                print(f"train accuracy at chance with a flat loss for {state['stuck_epochs']} epochs -> diverged",
                      flush=True)
            elif stop.requested:
                status = "interrupted"

    save_checkpoint(os.path.join(out, "last.pt"), checkpoint_payload())
    result = dict(status=status, epochs_run=len(state["history"]), epochs=cfg["epochs"],
                  best_val_acc=state["best_val_acc"], best_epoch=state["best_epoch"],
                  test_acc_at_best_val=None, test_loss_at_best_val=None, final_test_acc=None,
                  final_test_loss=None, final_val_acc=state["history"][-1]["val_acc"] if state["history"] else None,
                  convergence_epoch=convergence_epoch(state["history"]),
                  test_images=len(test_y), params=n_params, train_seconds=state["train_seconds"], device=device_name,
                  torch_version=torch.__version__, config=cfg)
    if status == "interrupted":
        write_json(os.path.join(out, "result.json"), result)
        print(f"interrupted ({stop.signal_name}) at epoch {state['epoch'] + 1}, step {state['step']}; "
              f"state saved to {out}/last.pt", flush=True)
        return result

    result["final_test_loss"], result["final_test_acc"] = evaluate(model, test_x, test_y, criterion, device)
    if state["best_epoch"] == state["epoch"] and state["step"] == 0:  # best.pt holds these very weights
        result["test_loss_at_best_val"], result["test_acc_at_best_val"] = result["final_test_loss"], result["final_test_acc"]
    elif state["best_epoch"] is not None:
        best_model, _ = load_checkpoint(os.path.join(out, "best.pt"), device)
        result["test_loss_at_best_val"], result["test_acc_at_best_val"] = evaluate(
            best_model, test_x, test_y, criterion, device)
    write_json(os.path.join(out, "result.json"), result)
    if state["history"]:
        plot_curves(state["history"], os.path.join(out, "curves.png"), title=run_name(cfg))
    best = "n/a" if result["test_acc_at_best_val"] is None else f"{result['test_acc_at_best_val']:.4f}"
    print(f"{status}: best val acc {result['best_val_acc']} at epoch {result['best_epoch']}, "
          f"test acc at best val {best}, final test acc {result['final_test_acc']:.4f} | {out}", flush=True)
    return result


CONVERGED_FRACTION = 0.95


def convergence_epoch(history):
    """The first epoch whose validation accuracy reaches 95% of the run's best (None before any epoch)."""
    if not history:
        return None
    best = max(m["val_acc"] for m in history)
    return next(m["epoch"] for m in history if m["val_acc"] >= CONVERGED_FRACTION * best)


def finish_epoch(cfg, state, model, criterion, device, val_x, val_y, lr, checkpoint_payload):
    """Validate, record the epoch's metrics, write best.pt (on a new best val accuracy) and last.pt.
    Returns True when the run has sat at chance accuracy with a flat loss for --diverge-patience epochs."""
    val_loss, val_acc = evaluate(model, val_x, val_y, criterion, device)
    state["epoch"] += 1
    history = state["history"]
    history.append(dict(epoch=state["epoch"], train_loss=state["loss_sum"] / state["seen"],
                        train_acc=state["correct"] / state["seen"], val_loss=val_loss, val_acc=val_acc, lr=lr,
                        img_per_s=state["seen"] / max(state["epoch_seconds"], 1e-9),
                        epoch_seconds=state["epoch_seconds"], elapsed=state["train_seconds"]))
    flat = len(history) >= 2 and abs(history[-1]["train_loss"] - history[-2]["train_loss"]) <= 0.01 * abs(
        history[-2]["train_loss"])
    at_chance = history[-1]["train_acc"] < 1.5 / cfg["num_classes"]
    state["stuck_epochs"] = state["stuck_epochs"] + 1 if (flat and at_chance) else 0
    state.update(step=0, perm=None)
    if state["best_val_acc"] is None or val_acc > state["best_val_acc"]:
        state.update(best_val_acc=val_acc, best_epoch=state["epoch"])
        save_checkpoint(os.path.join(cfg["out"], "best.pt"),
                        dict(model=model.state_dict(), config=cfg, epoch=state["epoch"], val_acc=val_acc))
    save_checkpoint(os.path.join(cfg["out"], "last.pt"), checkpoint_payload())
    return 0 < cfg["diverge_patience"] <= state["stuck_epochs"]


# ----------------------------------------------------------------------------------------------
# landscape and BN probes
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def preserved(model):
    """Parameters, buffers (BN running statistics included) and torch's RNG streams are put back on
    exit, so whatever runs inside leaves no trace on the model or on training."""
    device = next(model.parameters()).device
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    rng = rng_state(device)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(model.parameters(), params):
                p.copy_(saved)
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        set_rng_state(rng, device)


@torch.no_grad()
def set_tensors(tensors, base, terms):
    """t = base + Σ scale * direction over terms [(scale, [direction per tensor]), ...], always from the
    saved base, so moving from point to point never drifts. A direction entry may be None (zero)."""
    for i, (t, b) in enumerate(zip(tensors, base)):
        t.copy_(b)
        for scale, direction in terms:
            if direction[i] is not None and scale != 0:
                t.add_(direction[i].to(t.dtype), alpha=scale)


def tensors_norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def probe_along_gradient(model, loss_closure, etas):
    """The probe of Santurkar et al. 2018 at the model's current weights θ.

    loss_closure() returns the loss of the current weights on one fixed batch (torch's RNG is reset
    before every call, so dropout draws the same mask each time and L is one function). With
    g = ∇L(θ), for every step size η: L(θ − ηg) and ‖∇L(θ) − ∇L(θ − ηg)‖. Effective β-smoothness is
    max over η of that distance / ‖ηg‖. The model is left exactly as found (weights, BN running
    statistics, RNG). Returns floats: loss, grad_norm, and per-η lists losses, grad_dists, betas."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    with preserved(model):
        rng = rng_state(device)

        def loss_and_grad():
            set_rng_state(rng, device)
            loss = loss_closure()
            return loss.detach(), torch.autograd.grad(loss, params)

        theta = [p.detach().clone() for p in params]
        loss0, g = loss_and_grad()
        losses, dists = [], []
        for eta in etas:
            set_tensors(params, theta, [(-eta, g)])
            loss_eta, g_eta = loss_and_grad()
            losses.append(loss_eta)
            dists.append(tensors_norm([a - b for a, b in zip(g, g_eta)]))
        values = torch.stack([loss0.double(), tensors_norm(g)] + [v.double() for v in losses + dists]).tolist()
    n = len(etas)
    loss0, g_norm, losses, dists = values[0], values[1], values[2:2 + n], values[2 + n:]
    betas = [d / (eta * g_norm) if eta * g_norm > 0 else float("nan") for d, eta in zip(dists, etas)]
    return dict(loss=loss0, grad_norm=g_norm, losses=losses, grad_dists=dists, betas=betas)


class BNProbe:
    """A train() step hook for Task 2: records the training loss of every step and, every `every`
    steps, runs probe_along_gradient on the current batch (BN in train mode, batch statistics, as in
    the training step) with step sizes `etas`."""

    def __init__(self, criterion, etas, every, device):
        self.criterion, self.etas, self.every, self.device = criterion, list(etas), every, device
        self.step_losses, self.probes = [], []

    def __call__(self, model, x, y, loss, step):
        self.step_losses.append(loss.detach())
        if step % self.every == 0:
            def loss_closure():
                with autocast(self.device):
                    logits = model(x)
                return self.criterion(logits.float(), y)
            self.probes.append(dict(step=step, **probe_along_gradient(model, loss_closure, self.etas)))

    def arrays(self):
        """Everything recorded, as numpy arrays (probe_* are [n_probes] or [n_probes, n_etas])."""
        import numpy as np
        losses = torch.stack(self.step_losses).double().cpu().numpy() if self.step_losses else np.zeros(0)
        arrays = dict(step_loss=losses, etas=np.array(self.etas), probe_every=np.array(self.every))
        for key in ("step", "loss", "grad_norm", "losses", "grad_dists", "betas"):
            arrays[f"probe_{key}"] = np.array([p[key] for p in self.probes], dtype=np.float64).reshape(
                len(self.probes), *([len(self.etas)] if key in ("losses", "grad_dists", "betas") else []))
        return arrays


NORMS = ["filter", "layer", "none"]


def landscape_tensors(model):
    """(name, tensor) for every parameter and every floating-point buffer (BN running statistics):
    the state a landscape point sets. Integer buffers (num_batches_tracked) are left alone."""
    return list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]


def random_direction(model, generator, norm="filter", include_bn_bias=False):
    """A Gaussian direction with the shape of every parameter, {name: tensor} on the CPU (the same for a
    seed on any device). norm='filter' rescales each filter (slice along dim 0) to the norm of the
    weights' filter, 'layer' each tensor to the weights' norm, 'none' keeps it raw. Tensors with
    dim <= 1 (biases, BN weight and bias) get zero unless include_bn_bias, which treats them like weights."""
    direction = {}
    for name, w in model.named_parameters():
        w = w.detach().float().cpu()
        d = torch.randn(w.shape, generator=generator)
        if w.dim() <= 1 and not include_bn_bias:
            d.zero_()
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
    """A {name: tensor} direction in landscape_tensors order, on the device; names it lacks (buffers)
    are None, i.e. zero. Raises ValueError on a name or shape that does not fit the model."""
    tensors = dict(landscape_tensors(model))
    unknown = sorted(set(direction) - set(tensors))
    missing = sorted(n for n, _ in model.named_parameters() if n not in direction)
    wrong = sorted(n for n, d in direction.items() if n in tensors and tuple(d.shape) != tuple(tensors[n].shape))
    if unknown or missing or wrong:
        raise ValueError(f"direction does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}, "
                         f"wrong shape {wrong[:3]}")
    return [direction[n].to(device) if n in direction else None for n, _ in landscape_tensors(model)]


@torch.no_grad()
def reestimate_bn(model, images, device, batch_size=EVAL_BATCH, bf16=True):
    """BN running statistics recomputed from scratch on `images` (a cumulative average over batches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i in range(0, len(images), batch_size):
        with autocast(device, bf16):
            model(normalize(images[i:i + batch_size], channels_last=device.type == "cuda"))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def evaluate_at(model, base, terms, images, labels, criterion, device, bf16=True, bn_mode="eval",
                batch_size=EVAL_BATCH):
    """The one "model at θ + δ" evaluation: sets every landscape tensor to base + Σ scale·direction
    (from the saved base, no drift), optionally re-estimates BN statistics on the same images, and
    returns (loss, accuracy) in eval mode. The caller restores the model (see `preserved`)."""
    set_tensors([t for _, t in landscape_tensors(model)], base, terms)
    if bn_mode == "train":
        reestimate_bn(model, images, device, batch_size, bf16)
    return evaluate(model, images, labels, criterion, device, batch_size, bf16)


def parse_axis(text):
    """'MIN:MAX:NUM' -> list of NUM evenly spaced floats from MIN to MAX."""
    try:
        lo, hi, num = text.split(":")
        lo, hi, num = float(lo), float(hi), int(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX:NUM (e.g. -1:1:51)") from None
    if num < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: NUM must be at least 1")
    return [lo + (hi - lo) * i / (num - 1) for i in range(num)] if num > 1 else [lo]


def compute_surface(model, base, axes, images, labels, criterion, device, surface, save, bf16=True,
                    bn_mode="eval", batch_size=EVAL_BATCH, stop=None, round_size=8):
    """Fill surface['loss'] and surface['acc'] (flat, row-major over the grid: point k is
    (x[k // ny], y[k % ny])) at every point whose surface['done'] is False.

    axes: [(coordinates, direction list)] for x and, in 2D, y. Under torch.distributed every rank takes
    every world-th pending point; after each round the ranks sum their results so every rank holds
    the whole surface, and save(surface) runs (on rank 0 only). stop.requested ends early (resumable)."""
    import numpy as np
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    shape = [len(c) for c, _ in axes]
    pending = [int(k) for k in np.flatnonzero(~surface["done"])]
    started, done_before, last_print = time.time(), int(surface["done"].sum()), 0.0
    per_round = round_size * world
    for start in range(0, len(pending), per_round):
        chunk = pending[start:start + per_round]
        values = torch.zeros(3, len(chunk), dtype=torch.float64, device=device)  # loss, acc, done
        for j in range(rank, len(chunk), world):
            index = np.unravel_index(chunk[j], shape)
            terms = [(coords[i], direction) for (coords, direction), i in zip(axes, index)]
            values[0, j], values[1, j] = evaluate_at(model, base, terms, images, labels, criterion, device,
                                                     bf16, bn_mode, batch_size)
            values[2, j] = 1
        if distributed:
            torch.distributed.all_reduce(values)
        values = values.cpu().numpy()
        surface["loss"][chunk], surface["acc"][chunk], surface["done"][chunk] = values[0], values[1], values[2] > 0
        halt = torch.tensor([float(stop is not None and stop.requested)], device=device)
        if distributed:
            torch.distributed.all_reduce(halt)  # every rank stops after the same round
        if rank == 0:
            save(surface)
            n_done, elapsed = int(surface["done"].sum()), time.time() - started
            rate = (n_done - done_before) / max(elapsed, 1e-9)
            if time.time() - last_print > 5 or n_done == surface["done"].size:
                last_print = time.time()
                print(f"  {n_done}/{surface['done'].size} points | {rate:.2f} points/s | "
                      f"ETA {format_seconds((surface['done'].size - n_done) / max(rate, 1e-9))}", flush=True)
        if halt.item() > 0:
            return False
    return True


def hessian_top_eigenvalue(model, batch_losses, n_items, iters=20, tol=1e-3, seed=0):
    """The largest-magnitude eigenvalue of the Hessian of the mean loss over the trainable parameters,
    by power iteration on Hessian-vector products. batch_losses() yields the summed (not mean) loss of
    each batch; the Hessian is of their total / n_items. Returns (eigenvalue, iterations used)."""
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = tensors_norm(v)
    v = [t / norm for t in v]
    eigenvalue = None
    for it in range(1, iters + 1):
        hv = [torch.zeros_like(p) for p in params]
        for loss in batch_losses():
            grads = torch.autograd.grad(loss / n_items, params, create_graph=True)
            for acc, h in zip(hv, torch.autograd.grad(grads, params, grad_outputs=v)):
                acc.add_(h)
        new = sum((a * b).sum() for a, b in zip(hv, v)).item()
        norm = tensors_norm(hv)
        v = [t / norm for t in hv]
        converged = eigenvalue is not None and abs(new - eigenvalue) <= tol * abs(new)
        eigenvalue = new
        if converged:
            return eigenvalue, it
    return eigenvalue, iters


# ----------------------------------------------------------------------------------------------
# plotting
# ----------------------------------------------------------------------------------------------

def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history, path, title=""):
    """Loss and accuracy per epoch, train and validation, side by side."""
    plt = pyplot()
    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], marker=".", label=split)
        ax_acc.plot(epochs, [m[f"{split}_acc"] for m in history], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_landscape(surface, out, title="", log=False, zmax=None, xlabel="x"):
    """1D: loss and accuracy against x on twin axes (loss_1d.png). 2D: contour lines (contour.png),
    filled contours (heatmap.png) and a 3D surface (surface_3d.png). Returns the files written."""
    import numpy as np
    plt = pyplot()
    x, y, loss, acc = surface["x"], surface["y"], surface["loss"].astype(float), surface["acc"]
    z = np.minimum(loss, zmax) if zmax is not None else loss
    zlabel = "loss"
    if log:
        z, zlabel = np.log10(np.maximum(z, 1e-12)), "log10 loss"
    if len(y) == 0:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ax.plot(x, z, color="tab:blue", marker=".", label=zlabel)
        ax.set(xlabel=xlabel, ylabel=zlabel, title=title)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(x, acc, color="tab:red", marker=".", label="accuracy")
        twin.set_ylabel("accuracy", color="tab:red")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "loss_1d.png"), dpi=120)
        plt.close(fig)
        return ["loss_1d.png"]
    grid_x, grid_y = np.meshgrid(x, y, indexing="ij")  # loss[i, j] belongs to (x[i], y[j])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lines = ax.contour(grid_x, grid_y, z, levels=20, cmap="viridis")
    ax.clabel(lines, fontsize=6)
    ax.set(xlabel="x", ylabel="y", title=title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "contour.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 5))
    filled = ax.contourf(grid_x, grid_y, z, levels=40, cmap="viridis")
    fig.colorbar(filled, ax=ax, label=zlabel)
    ax.set(xlabel="x", ylabel="y", title=title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heatmap.png"), dpi=120)
    plt.close(fig)
    fig = plt.figure(figsize=(6.5, 5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(grid_x, grid_y, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel="x", ylabel="y", zlabel=zlabel, title=title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "surface_3d.png"), dpi=120)
    plt.close(fig)
    return ["contour.png", "heatmap.png", "surface_3d.png"]


def filter_grid(weight, n=None, pad=1):
    """The first conv layer's filters [C_out, 3, k, k] as one RGB image: each filter min-max normalized
    to [0, 1] on its own, laid out in a near-square grid with `pad` white pixels between filters."""
    import numpy as np
    w = weight.detach().float().cpu()[:n]
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # [n, k, k, 3]
    count, k = len(w), w.shape[1]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.ones((rows * (k + pad) - pad, cols * (k + pad) - pad, 3))
    for i, f in enumerate(w):
        r, c = divmod(i, cols)
        grid[r * (k + pad):r * (k + pad) + k, c * (k + pad):c * (k + pad) + k] = f
    return grid


def plot_images_grid(images, path, title, cmap=None):
    """Save one image (H x W or H x W x 3) or a list of single-channel maps as a tiled figure."""
    plt = pyplot()
    if isinstance(images, list):
        cols = math.ceil(math.sqrt(len(images)))
        rows = math.ceil(len(images) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img in zip(axes.flat, images):
            ax.imshow(img, cmap=cmap)
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(images, interpolation="nearest")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MODEL_COLOURS = {"vgg_a": "tab:orange", "vgg_a_bn": "tab:blue", "vgg_a_res_bn": "tab:green", "resvgg16": "tab:purple"}


def stack_padded(arrays):
    """Rows of unequal length (a run that stopped early) as one [n, max_len] array, NaN-padded;
    non-finite values become NaN so bands ignore them."""
    import numpy as np
    out = np.full((len(arrays), max((len(a) for a in arrays), default=0)), np.nan)
    for row, a in zip(out, arrays):
        row[:len(a)] = np.where(np.isfinite(a), a, np.nan)
    return out


def nan_reduce(fn, values, axis):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return fn(values, axis=axis)


def moving_average(values, window):
    import numpy as np
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.concatenate([np.full(window - 1, np.nan), np.convolve(values, kernel, mode="valid")])


def plot_loss_band(runs, path, smooth=1):
    """Course 2.3.1: per step, the max and min training loss over the learning rates, one band per model."""
    import numpy as np
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for model in dict.fromkeys(r["model"] for r in runs):
        losses = stack_padded([moving_average(r["arrays"]["step_loss"], smooth) for r in runs if r["model"] == model])
        steps = np.arange(losses.shape[1])
        lo, hi = nan_reduce(np.nanmin, losses, 0), nan_reduce(np.nanmax, losses, 0)
        ax.fill_between(steps, lo, hi, color=MODEL_COLOURS.get(model), alpha=0.45, lw=0, label=f"{model}")
    lrs = ", ".join(f"{lr:g}" for lr in dict.fromkeys(r["lr"] for r in runs))
    ax.set(xlabel="training step", ylabel="training loss",
           title=f"loss landscape band: min..max training loss over lr in {{{lrs}}}"
                 + (f" (moving average {smooth})" if smooth > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_probe(runs, path, key, ylabel, title, log=False, band=True):
    """One panel per learning rate, BN vs no-BN: the band over step sizes η of a probe quantity
    (band=True), or its max over η (band=False), at every probed step."""
    import numpy as np
    plt = pyplot()
    lrs = list(dict.fromkeys(r["lr"] for r in runs))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 3.8), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for r in (r for r in runs if r["lr"] == lr):
            a = r["arrays"]
            values = np.where(np.isfinite(a[key]), a[key], np.nan)
            colour = MODEL_COLOURS.get(r["model"])
            if values.size == 0:
                continue
            if band:
                ax.fill_between(a["probe_step"], nan_reduce(np.nanmin, values, 1), nan_reduce(np.nanmax, values, 1),
                                color=colour, alpha=0.45, lw=0, label=r["model"])
            else:
                ax.plot(a["probe_step"], nan_reduce(np.nanmax, values, 1), color=colour, lw=1.2, label=r["model"])
        ax.set(title=f"lr {lr:g}", xlabel="training step", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_runs_curves(runs, path):
    """Training loss and validation accuracy per epoch of every run: colour = model, shade = lr."""
    plt = pyplot()
    lrs = list(dict.fromkeys(r["lr"] for r in runs))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        epochs = [m["epoch"] for m in r["history"]]
        style = dict(color=MODEL_COLOURS.get(r["model"]), alpha=1.0 - 0.6 * lrs.index(r["lr"]) / max(len(lrs), 1),
                     marker=".", label=f"{r['model']} lr {r['lr']:g}")
        ax_loss.plot(epochs, [m["train_loss"] for m in r["history"]], **style)
        ax_acc.plot(epochs, [m["val_acc"] for m in r["history"]], **style)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

BN_FIGURES = ["loss_band.png", "loss_variation.png", "grad_predictiveness.png", "beta_smoothness.png", "curves.png"]


def save_bn_analysis(runs, out, settings):
    """The raw numbers of a BN analysis: bn_analysis.json (settings, per-run results and epoch
    metrics) and bn_analysis.npz (per-step losses and probe arrays, keys '<model>/lr<lr>/<name>')."""
    import numpy as np
    np.savez(os.path.join(out, "bn_analysis.npz"),
             **{f"{r['model']}/lr{r['lr']:g}/{k}": v for r in runs for k, v in r["arrays"].items()})
    write_json(os.path.join(out, "bn_analysis.json"), dict(
        settings=settings, runs=[{k: r[k] for k in ("model", "lr", "dir", "result", "history")} for r in runs]))


def load_bn_analysis(out):
    import numpy as np
    with open(os.path.join(out, "bn_analysis.json")) as f:
        saved = json.load(f)
    with np.load(os.path.join(out, "bn_analysis.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    runs = saved["runs"]
    for r in runs:
        prefix = f"{r['model']}/lr{r['lr']:g}/"
        r["arrays"] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return runs, saved["settings"]


def bn_run_stats(run):
    """Headline numbers of one run's probes: mean over probed steps of the loss range over η, median
    over probed steps of the largest gradient change, and median effective β-smoothness."""
    import numpy as np
    a = run["arrays"]
    if a["probe_losses"].size == 0:
        return dict(loss_band=float("nan"), grad_dist=float("nan"), beta=float("nan"))
    return dict(loss_band=float(np.nanmean(np.ptp(a["probe_losses"], axis=1))),
                grad_dist=float(np.nanmedian(nan_reduce(np.nanmax, a["probe_grad_dists"], 1))),
                beta=float(np.nanmedian(nan_reduce(np.nanmax, a["probe_betas"], 1))))


def percent(v):
    return "–" if v is None else f"{100 * v:.2f}"


def short_number(v):
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def bn_summary_table(runs, link_prefix=""):
    """Markdown: per model and lr, accuracy and the probe headline numbers, each row linking its run
    folder (run["dir"], relative to the analysis folder, behind `link_prefix`); below it, per model,
    the mean width of the min..max training-loss band over the learning rates."""
    import numpy as np
    lines = ["| model | lr | status | final val acc % | test acc % at best val | final test acc % | "
             "convergence epoch | loss range over η (mean) | grad-pred. distance (median) | β-smoothness (median) | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        res, st = r["result"], bn_run_stats(r)
        lines.append(f"| {r['model']} | {r['lr']:g} | {res['status']} | {percent(res['final_val_acc'])} | "
                     f"{percent(res['test_acc_at_best_val'])} | {percent(res['final_test_acc'])} | "
                     f"{res['convergence_epoch'] if res['convergence_epoch'] is not None else '–'} | "
                     f"{short_number(st['loss_band'])} | {short_number(st['grad_dist'])} | {short_number(st['beta'])} | "
                     f"[{os.path.basename(r['dir'])}]({link_prefix}{r['dir']}) |")
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in runs):
        losses = stack_padded([r["arrays"]["step_loss"] for r in runs if r["model"] == model])
        width = nan_reduce(np.nanmax, losses, 0) - nan_reduce(np.nanmin, losses, 0)
        lines.append(f"- {model}: mean width of the training-loss band over the learning rates "
                     f"(max_curve − min_curve, course 2.3.1): {short_number(float(np.nanmean(width)))}")
    return "\n".join(lines) + "\n"


def write_bn_report(runs, out, smooth=1):
    """Every Task 2 BN figure and summary.md, from the raw numbers alone."""
    plot_loss_band(runs, os.path.join(out, "loss_band.png"), smooth)
    plot_probe(runs, os.path.join(out, "loss_variation.png"), "probe_losses", "L(θ − ηg)",
               "loss variation: range of the loss along the gradient over step sizes η")
    plot_probe(runs, os.path.join(out, "grad_predictiveness.png"), "probe_grad_dists", "‖∇L(θ) − ∇L(θ − ηg)‖",
               "gradient predictiveness: change of the gradient along the gradient, range over η")
    plot_probe(runs, os.path.join(out, "beta_smoothness.png"), "probe_betas", "max over η of ‖Δ∇L‖ / ‖ηg‖",
               "effective β-smoothness", log=True, band=False)
    plot_runs_curves(runs, os.path.join(out, "curves.png"))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(bn_summary_table(runs))


def plot_surfaces_side_by_side(surfaces, titles, path, log=False):
    """2D surfaces next to each other on one colour scale and one z range: 3D above, filled contours below."""
    import numpy as np
    from matplotlib.colors import Normalize
    plt = pyplot()
    zs = [np.log10(np.maximum(s["loss"], 1e-12)) if log else s["loss"] for s in surfaces]
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs])
    norm = Normalize(float(finite.min()), float(finite.max()))
    levels = np.linspace(norm.vmin, norm.vmax, 30)
    fig = plt.figure(figsize=(5.5 * len(surfaces), 9))
    for k, (s, z, title) in enumerate(zip(surfaces, zs, titles)):
        gx, gy = np.meshgrid(s["x"], s["y"], indexing="ij")
        ax = fig.add_subplot(2, len(surfaces), k + 1, projection="3d")
        ax.plot_surface(gx, gy, z, cmap="viridis", norm=norm, linewidth=0)
        ax.set(title=title, xlabel="x", ylabel="y", zlim=(norm.vmin, norm.vmax),
               zlabel="log10 loss" if log else "loss")
        ax = fig.add_subplot(2, len(surfaces), len(surfaces) + k + 1)
        filled = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=norm, extend="both")
        ax.set(xlabel="x", ylabel="y", aspect="equal")
    fig.colorbar(filled, ax=fig.axes[len(surfaces):], label="log10 loss" if log else "loss", shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


GRID_ARCHS, GRID_ACTS, GRID_LOSSES, GRID_OPTS = ["standard", "light"], ["relu", "leaky_relu", "tanh"], ["ce", "nll"], ["adam", "sgd"]
HP_ROWS = [  # report 4.1: (label, run folder); two rows are grid runs with the same config
    ("SGD lr 0.1, momentum 0.9, wd 5e-4", "hp_sgd_lr0.1_wd5e-4"),
    ("SGD lr 0.05, momentum 0.9, wd 5e-4", "hp_sgd_lr0.05_wd5e-4"),
    ("SGD lr 0.01, momentum 0.9, wd 5e-4", "grid_standard_relu_ce_sgd"),
    ("SGD lr 0.01, momentum 0.9, wd 1e-4", "hp_sgd_lr0.01_wd1e-4"),
    ("Adam lr 1e-3", "hp_adam_lr1e-3"),
    ("Adam lr 1e-4", "grid_standard_relu_ce_adam"),
]
SHARPNESS_ROWS = [("best SGD model", "best_sgd"), ("best Adam model", "best_adam"), ("VGG-A (Adam)", "vgg_a"),
                  ("VGG-A + BN (Adam)", "vgg_a_bn")]


def grid_runs(out):
    """The 24 grid configurations in the report's order: (number, arch, act, loss, opt, run folder)."""
    k = 0
    for arch in GRID_ARCHS:
        for act in GRID_ACTS:
            for loss in GRID_LOSSES:
                for opt in GRID_OPTS:
                    k += 1
                    yield k, arch, act, loss, opt, os.path.join(out, "runs", f"grid_{arch}_{act}_{loss}_{opt}")


def read_result(run_dir):
    path = os.path.join(run_dir, "result.json")
    return load_json(path) if os.path.exists(path) else None


def best_grid_run(out, opt=None):
    """The grid run with the highest validation accuracy (never the test set), optionally only `opt`
    runs; ties go to the earlier row (ce before its identical nll twin)."""
    best, best_acc = None, -1.0
    for _, _, _, _, run_opt, run_dir in grid_runs(out):
        result = read_result(run_dir)
        if (opt is None or run_opt == opt) and result and result["best_val_acc"] is not None \
                and result["best_val_acc"] > best_acc:
            best, best_acc = run_dir, result["best_val_acc"]
    return best


def _row(cells, bold=False):
    return "| " + " | ".join(f"**{c}**" if bold and c != "" else str(c) for c in cells) + " |"


def _link(out, run_dir):
    rel = os.path.relpath(run_dir, out)
    return f"[{os.path.basename(run_dir)}]({rel})"


def write_report(out, profile=""):
    """tables.md and figures/ from the run folders under `out`; returns the Markdown."""
    import shutil
    figures = os.path.join(out, "figures")
    os.makedirs(os.path.join(figures, "curves"), exist_ok=True)
    run_names = sorted(os.listdir(os.path.join(out, "runs"))) if os.path.isdir(os.path.join(out, "runs")) else []
    devices = sorted({r["device"] for r in (read_result(os.path.join(out, "runs", d)) for d in run_names) if r})
    md = [f"Generated by `run_all.sh --profile {profile}` from the result files in this folder; "
          f"device: {', '.join(devices) or 'n/a'}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          "Accuracies in %. Model selection uses the validation split only; test accuracy is read at the "
          "best-validation epoch.", ""]

    md += ["### 1. Hyper-parameter search (ResVGG16-standard, ReLU, cross-entropy, cosine schedule)", "",
           _row(["config", "status", "best val acc", "test acc at best val", "epochs run", "run"]),
           "|---|---|---|---|---|---|"]
    for label, name in HP_ROWS:
        run_dir, r = os.path.join(out, "runs", name), read_result(os.path.join(out, "runs", name))
        md.append(_row([label, r["status"], percent(r["best_val_acc"]), percent(r["test_acc_at_best_val"]), r["epochs_run"],
                        _link(out, run_dir)]) if r else _row([label, "missing", "–", "–", "–", name]))

    best = best_grid_run(out)
    md += ["", "### 2. The 24-configuration grid", "",
           _row(["#", "arch", "act", "loss", "opt", "params", "best val acc", "test acc at best val", "train time",
                 "status", "run"]), "|---|---|---|---|---|---|---|---|---|---|---|"]
    twins = {}
    for k, arch, act, loss, opt, run_dir in grid_runs(out):
        r = read_result(run_dir)
        if r is None:
            md.append(_row([k, arch, act, loss, opt, "–", "–", "–", "–", "missing", os.path.basename(run_dir)]))
            continue
        twins.setdefault((arch, act, opt), {})[loss] = (r, run_dir)
        md.append(_row([k, arch, act, loss, opt, f"{r['params']:,}", percent(r["best_val_acc"]),
                        percent(r["test_acc_at_best_val"]), format_seconds(r["train_seconds"]), r["status"],
                        _link(out, run_dir)], bold=run_dir == best))
    diffs = {"best val acc (pp)": [], "test acc at best val (pp)": [], "final train loss": []}
    for pair in twins.values():
        if len(pair) == 2:
            (a, da), (b, db) = pair["ce"], pair["nll"]
            for key, field in (("best val acc (pp)", "best_val_acc"), ("test acc at best val (pp)", "test_acc_at_best_val")):
                if a[field] is not None and b[field] is not None:
                    diffs[key].append(100 * abs(a[field] - b[field]))
            la, lb = read_metrics(da), read_metrics(db)
            if la and lb and la[-1]["train_loss"] is not None and lb[-1]["train_loss"] is not None:
                diffs["final train loss"].append(abs(la[-1]["train_loss"] - lb[-1]["train_loss"]))
    measured = "; ".join(f"{k} {max(v):.3g}" for k, v in diffs.items() if v) or "no complete pairs"
    md += ["", f"Bold: the best validation accuracy. `nll` is log_softmax + NLLLoss, which is exactly how "
           f"cross-entropy is computed, so every ce row and its nll twin are the same training run up to "
           f"floating-point nondeterminism (a test checks loss and gradients agree to 1e-6). Largest "
           f"difference measured over the {len(diffs['final train loss'])} pairs: {measured}."]

    md += ["", "### 3. Loss functions beyond the report (best grid configuration)", ""]
    if best:
        cfg = read_result(best)["config"]
        md += [f"Configuration: {cfg['arch']}, {cfg['act']}, {cfg['opt']} (the best validation accuracy above).", "",
               _row(["loss", "status", "best val acc", "test acc at best val", "final test acc", "epochs run", "run"]),
               "|---|---|---|---|---|---|---|"]
        ce_twin = os.path.join(out, "runs", f"grid_{cfg['arch']}_{cfg['act']}_ce_{cfg['opt']}")
        for label, run_dir in (("ce", ce_twin), ("mse (softmax vs one-hot)", os.path.join(out, "runs", "loss_mse")),
                               ("ce + label smoothing 0.1", os.path.join(out, "runs", "loss_ce_ls0.1"))):
            r = read_result(run_dir)
            md.append(_row([label, r["status"], percent(r["best_val_acc"]), percent(r["test_acc_at_best_val"]),
                            percent(r["final_test_acc"]), r["epochs_run"], _link(out, run_dir)]) if r else
                      _row([label, "missing", "–", "–", "–", "–", os.path.basename(run_dir)]))
    else:
        md.append("No finished grid run yet.")

    md += ["", "### 4. Task 2: VGG-A with and without BatchNorm", "",
           _row(["model", "optimizer", "lr", "test acc at best val", "final test acc", "best val acc",
                 "convergence epoch", "params", "status", "run"]), "|---|---|---|---|---|---|---|---|---|---|"]
    for model in ("vgg_a", "vgg_a_bn", "vgg_a_res_bn"):
        for opt in ("adam", "sgd"):
            run_dir = os.path.join(out, "runs", f"t2_{model}_{opt}")
            r = read_result(run_dir)
            md.append(_row([model, opt, f"{r['config']['lr']:g}", percent(r["test_acc_at_best_val"]), percent(r["final_test_acc"]),
                            percent(r["best_val_acc"]), r["convergence_epoch"], f"{r['params']:,}", r["status"],
                            _link(out, run_dir)]) if r else _row([model, opt, "–", "–", "–", "–", "–", "–", "missing", ""]))
    md += ["", f"Convergence epoch: the first epoch whose validation accuracy reaches "
               f"{CONVERGED_FRACTION:.0%} of the run's best."]

    md += ["", "### 5. How BN helps optimization (task2/bn_analysis.py)", ""]
    bn_dir = os.path.join(out, "bn_analysis")
    if os.path.exists(os.path.join(bn_dir, "bn_analysis.json")):
        runs, settings = load_bn_analysis(bn_dir)
        md += [f"{settings['opt']}, {settings['epochs']} epochs, probe every {settings['probe_every']} steps at "
               f"η = lr × {settings['probe_etas']}.", "", bn_summary_table(runs, link_prefix="bn_analysis/")]
        for name in BN_FIGURES:
            shutil.copy(os.path.join(bn_dir, name), os.path.join(figures, f"bn_{name}"))
    else:
        md.append("Not run yet.")

    md += ["", "### 6. Sharpness: top Hessian eigenvalue at the checkpoint", "",
           _row(["model", "checkpoint", "top eigenvalue", "power iterations", "evaluation data"]), "|---|---|---|---|---|"]
    for label, name in SHARPNESS_ROWS:
        path = os.path.join(out, "landscapes", name, "surface.json")
        info = load_json(path) if os.path.exists(path) else {}
        h = info.get("hessian")
        ckpt = os.path.relpath(info["settings"]["ckpt"], out) if info else None
        md.append(_row([label, f"[{ckpt}]({ckpt})" if ckpt else "–",
                        f"{h['top_eigenvalue']:.4g}" if h else "missing", h["iterations"] if h else "–",
                        f"first {info['settings']['n_items']} {info['settings']['split']} images" if info else "–"]))

    figure_list = []
    for name in run_names:
        curves = os.path.join(out, "runs", name, "curves.png")
        if os.path.exists(curves):
            shutil.copy(curves, os.path.join(figures, "curves", f"{name}.png"))
    for src, dst, caption in (
            ("visualize/filters.png", "filters.png", "first-layer filters of the best model"),
            ("visualize/feature_maps.png", "feature_maps.png", "feature maps of a test image, best model"),
            ("landscapes/best_sgd/surface_3d.png", "surface_best_sgd.png", "loss surface of the best SGD model"),
            ("landscapes/best_adam/surface_3d.png", "surface_best_adam.png", "loss surface of the best Adam model"),
            ("landscapes/interp_sgd_adam/loss_1d.png", "interp_sgd_adam.png",
             "linear interpolation from the best SGD model (α = 0) to its Adam twin (α = 1)")):
        if os.path.exists(os.path.join(out, src)):
            shutil.copy(os.path.join(out, src), os.path.join(figures, dst))
            figure_list.append((dst, caption))
    pair = [os.path.join(out, "landscapes", m, "surface.npz") for m in ("vgg_a", "vgg_a_bn")]
    if all(os.path.exists(p) for p in pair):
        import numpy as np
        surfaces = []
        for p in pair:
            with np.load(p) as s:
                surfaces.append(dict(s))
        plot_surfaces_side_by_side(surfaces, ["VGG-A", "VGG-A + BN"], os.path.join(figures, "vgg_a_vs_bn.png"), log=True)
        figure_list.append(("vgg_a_vs_bn.png", "VGG-A vs VGG-A + BN: same seed, same grid, same (log10) colour scale"))
    figure_list += [(f"bn_{n}", f"Task 2: {n[:-4].replace('_', ' ')}") for n in BN_FIGURES
                    if os.path.exists(os.path.join(figures, f"bn_{n}"))]
    md += ["", "### Figures", "", "Training curves of every run: `figures/curves/`.", ""]
    md += [f"- {caption}: ![{caption}](figures/{name})" for name, caption in figure_list]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(text)
    return text


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(readme, tables, out):
    """Replace README's text between the result markers with `tables`, links made relative to README."""
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(readme)))
    text = re.sub(r"\]\((?!https?://|/)", f"]({rel}/", tables)  # every relative link, now from README's folder
    with open(readme) as f:
        content = f.read()
    if README_START not in content or README_END not in content:
        raise SystemExit(f"error: {readme} lacks the markers {README_START} and {README_END}")
    head, rest = content.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    with open(readme, "w") as f:
        f.write(f"{head}{README_START}\n{text}{README_END}{tail}")
