"""Speed of this repo's pipelines against the naive one most public versions use (a torchvision-style
Dataset of PIL images with per-sample transforms and a DataLoader, fp32), same model, same machine.

    python bench/throughput.py train --arch light --width 0.25 --n-images 2048
    python bench/throughput.py landscape --arch light --width 0.25 --n-images 1000 --points 6
    python bench/throughput.py predict --profiles quick cpu      # predicted wall time of run_all.sh profiles
    python bench/throughput.py precision --models resvgg16 vgg_a  # fp32 vs channels_last vs bf16 + channels_last
    python bench/throughput.py hessian --model vgg_a_bn --n-images 256   # top eigenvalue, trace: ours vs PyHessian

train: images/s of the training step (ours: common.train, data on the device, per-batch augmentation,
bf16 + channels_last on CUDA), with the achieved TFLOP/s (forward + backward FLOPs per image counted by
torch.utils.flop_counter) and, on a GPU whose dense bf16 peak is known, the % of that peak (MFU).
landscape: grid points/s (ours: common.evaluate_at on device-resident
data; naive: a model copy and a DataLoader pass per point, as in the reference implementation).
predict: the wall time of each run_all.sh profile on this device, from its plan (task2/reproduce.py) and
img/s measured here for every model the profile trains (training steps and evaluation batches); surfaces
cost their points × images at the evaluation rate, the Hessian 2 training steps per image and iteration.
hessian: seconds to the top Hessian eigenvalue and the trace on one batch, ours and PyHessian's (pip install
pyhessian for the comparison; it is never a dependency), same fp32 model, images and threads.
matmul: GFLOP/s of 2048×2048 matrix products in fp32 and bf16, a practical peak beside the nominal one.
precision: for each model, training img/s (common.train), evaluation img/s (common.evaluate) and landscape
points/s (common.evaluate_at) in fp32, fp32 + channels_last and bf16 + channels_last, with GFLOP/s and the
% of the device's peak for that precision. A CPU's peak is cores × FLOP/cycle × clock: 32 fp32 FLOP/cycle
per core with AVX-512 or AVX2 (two 256-bit FMA pipes; Zen 4 runs 512-bit instructions on them in two
halves), twice that in bf16 (AVX512-BF16 dot products), the clock from /proc/cpuinfo (the nominal one: a
boost clock makes the true peak higher). --peak-tflops PRECISION=VALUE overrides it.
Prints one JSON line per pipeline or profile; --out FILE also writes them as a JSON list.
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "task2")]
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bn_analysis  # noqa: E402
import common  # noqa: E402
import reproduce  # noqa: E402


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def naive_transform(train):
    import torchvision.transforms as T
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(common.CIFAR10_MEAN, common.CIFAR10_STD)])


def fake_images(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=gen)


def write_fake_dataset(root, images, labels):
    """A cifar-10-batches-py folder holding `images` as training data, so common.train reads them."""
    import pickle
    folder = os.path.join(root, common.CIFAR10_FOLDER)
    os.makedirs(folder, exist_ok=True)
    parts = np.array_split(np.arange(len(labels)), 5)
    for name, idx in zip(common.CIFAR10_TRAIN_FILES, parts):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": images[idx].reshape(len(idx), -1).numpy(), b"labels": labels[idx].tolist()}, f)
    with open(os.path.join(folder, common.CIFAR10_TEST_FILE), "wb") as f:
        pickle.dump({b"data": images[:100].reshape(100, -1).numpy(), b"labels": labels[:100].tolist()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [str(i).encode() for i in range(10)]}, f)


HELD_OUT = 100  # train and precision: fake images held out as the validation split
PER_BLOCK_BLOCKS = 16  # predict: parameter blocks of a --per-block spectrum (VGG-A: 11 convs + 3 linears)
VISUALIZE_SECONDS = 10.0  # predict: a checkpoint loaded and two figures drawn
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 per GPU, from the datasheets


def train_flops_per_image(cfg, device):
    """Forward + backward FLOPs of one training image, counted on a batch of two."""
    from torch.utils.flop_counter import FlopCounterMode
    model = common.build_model(cfg).to(device).train()
    x, y = torch.randn(2, 3, 32, 32, device=device), torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


def with_mfu(result, flops_per_image, device):
    """Adds TFLOP/s achieved and, where the device's peak is known, its percentage (else null)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    tflops = result["img_per_s"] * flops_per_image / 1e12
    return dict(result, gflop_per_image=round(flops_per_image / 1e9, 4), tflop_per_s=round(tflops, 3),
                peak_tflop_per_s=peak, mfu_percent=round(100 * tflops / peak, 2) if peak else None)


def model_config(args):
    return dict(model=args.model, arch=args.arch, act="relu", residual=True, width=args.width, dropout=0.5,
                num_classes=10)


def bench_train(args, device):
    images, labels = fake_images(args.n_images)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_dataset(tmp, images, labels)
        cfg = common.make_config(
            model=args.model, arch=args.arch, act="relu", width=args.width, data_dir=tmp, no_download=True,
            epochs=args.epochs, batch_size=128, device=args.device, out=os.path.join(tmp, "run"), val=HELD_OUT,
            precision=args.precision, compile=args.compile)
        common.train(cfg)
        history = common.read_metrics(os.path.join(tmp, "run"))
        results.append(dict(pipeline="ours" + (" compiled" if args.compile else ""), what="train",
                            precision=cfg["precision"], memory_format=cfg["memory_format"],
                            img_per_s=history[-1]["img_per_s"], epochs=args.epochs, images=len(labels) - 100))
    flops = train_flops_per_image(model_config(args), device)
    if args.no_naive:
        return [with_mfu(r, flops, device) for r in results]
    torch.manual_seed(0)
    model = common.build_model(model_config(args)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(PILDataset(images, labels, naive_transform(True)), batch_size=128,
                                         shuffle=True, num_workers=args.workers, drop_last=True)
    model.train()
    seen, started = 0, None
    for epoch in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if started is None:  # the first step includes worker start-up and cudnn tuning: not timed
                sync(device)
                started = time.time()
            else:
                seen += len(y)
    sync(device)
    results.append(dict(pipeline="naive", what="train", img_per_s=seen / (time.time() - started),
                        epochs=args.epochs, images=len(labels)))
    return [with_mfu(r, flops, device) for r in results]


def bench_landscape(args, device):
    images, labels = fake_images(args.n_images)
    torch.manual_seed(0)
    numerics = common.numerics_for(args.precision, device)
    model = numerics.place(common.build_model(model_config(args)), device).eval()
    criterion = common.loss_fn("ce")
    direction = common.direction_list(model, common.random_direction(model, torch.Generator().manual_seed(0)), device)
    base = [t.detach().clone() for _, t in common.landscape_tensors(model)]
    coords = np.linspace(-1, 1, args.points)
    dev_images, dev_labels = images.to(device), labels.to(device)
    common.evaluate_at(model, base, [(0.0, direction)], dev_images, dev_labels, criterion, device, numerics)
    sync(device)
    started = time.time()
    for c in coords:
        common.evaluate_at(model, base, [(float(c), direction)], dev_images, dev_labels, criterion, device, numerics)
    sync(device)
    ours = args.points / (time.time() - started)
    loader_data = PILDataset(images, labels, naive_transform(False))
    started = time.time()
    for c in coords:
        net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # the naive way: fp32, NCHW
        with torch.no_grad():
            for p, b, d in zip(net.parameters(), base, direction):
                p.copy_(b + float(c) * d if d is not None else b)
        net.eval()
        total = 0.0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(loader_data, batch_size=128, num_workers=args.workers):
                total += F.cross_entropy(net(x.to(device)), y.to(device), reduction="sum").item()
    sync(device)
    naive = args.points / (time.time() - started)
    return [dict(pipeline="ours", what="landscape", points_per_s=ours, images=len(labels), points=args.points),
            dict(pipeline="naive", what="landscape", points_per_s=naive, images=len(labels), points=args.points)]


# -- fp32 vs channels_last vs bf16 -------------------------------------------------------------

PRECISION_MODES = [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "channels_last")]
CPU_FP32_FLOP_PER_CYCLE = 32  # per core: two 256-bit FMA pipes × 8 lanes × 2 (see the module docstring)


def cpu_peak_tflops(precision):
    """The CPU's peak for `precision` (module docstring), None where /proc/cpuinfo gives no clock."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    flop_per_cycle = CPU_FP32_FLOP_PER_CYCLE * (2 if precision == "bf16" else 1)
    return os.cpu_count() * flop_per_cycle * mhz * 1e6 / 1e12


def peak_tflops(args, device, precision):
    if precision in args.peak_tflops:
        return args.peak_tflops[precision]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if precision == "bf16" else None
    return cpu_peak_tflops(precision)


def bench_hessian(args, device):
    """The top Hessian eigenvalue and the trace of one batch of --n-images fake images, ours (Lanczos, top
    residual at --hessian-tol; Hutchinson with --trace-probes probes) and PyHessian's when it is installed
    (power iteration at the same tolerance; its trace with the same probes: tol -inf, as its stopping test
    divides by the signed trace and stops at once when that is negative): the same fp32 model, images and
    threads, each timed from the model's first forward pass, with the Hessian-vector products it took."""
    torch.manual_seed(0)
    cfg = train_config(["--model", args.model, "--arch", args.arch, "--width", str(args.width), "--precision",
                        "fp32", "--dropout", "0"], task2=args.model in common.VGG_A_MODELS)
    model = common.build_model(cfg).to(device).eval()
    x, y = fake_images(args.n_images)
    x, y, criterion = common.FP32.inputs(x.to(device)), y.to(device), torch.nn.CrossEntropyLoss()

    def batch_losses():
        yield criterion(model(x), y) * len(y)
    batch_losses.batches = 1
    rows, common_row = [], dict(what="hessian", images=args.n_images, threads=torch.get_num_threads())
    products, steps = counted(common.HessianVectorProduct, "__call__"), []

    def our_top():  # each Lanczos step's top Ritz value and time, for the time to PyHessian's answer
        steps.append((0, -math.inf, time.time()))
        return common.hessian_extremes(model, batch_losses, len(y), args.hessian_iters, args.hessian_tol,
                                       extreme="top", on_step=lambda j, top: steps.append((j, top, time.time())))["top"]
    for statistic, ours in (("top eigenvalue", our_top),
                            ("trace", lambda: common.hessian_trace(model, batch_losses, len(y),
                                                                   args.trace_probes)["trace"])):
        rows.append(dict(common_row, impl="ours", statistic=statistic, **timed(ours, device, products)))
    try:
        import pyhessian  # optional: pip install pyhessian (never a dependency of this repository)
    except ImportError:
        return rows + [dict(common_row, impl="pyhessian", statistic="not installed")]
    def make():  # its backward accumulates into .grad: a second instance would see twice the Hessian
        model.zero_grad(set_to_none=True)
        return pyhessian.hessian(model, criterion, data=(x, y), cuda=device.type == "cuda")
    products = counted(sys.modules["pyhessian.hessian"], "hessian_vector_product")
    for statistic, theirs in (("top eigenvalue", lambda: make().eigenvalues(args.hessian_iters,
                                                                            args.hessian_tol)[0][0]),
                              ("trace", lambda: float(np.mean(make().trace(args.trace_probes, tol=-math.inf))))):
        rows.append(dict(common_row, impl="pyhessian", statistic=statistic, **timed(theirs, device, products)))
    return rows + [dict(common_row, impl="ours", statistic="top eigenvalue, to PyHessian's value",
                        **reached(steps, next(r["value"] for r in rows if r["impl"] == "pyhessian"
                                                       and r["statistic"] == "top eigenvalue")))]


def reached(steps, target):
    """Our Lanczos top eigenvalue at the first step whose top Ritz value reached `target` (PyHessian's final
    top: the same answer, as Ritz values only grow towards the top eigenvalue), with its seconds and products;
    the last step, reached False, if none did."""
    started = steps[0][2]
    j, top, at = next((step for step in steps[1:] if step[1] >= target), steps[-1])
    return dict(value=top, seconds=round(at - started, 3), products=j, seconds_per_product=round((at - started) / j, 4),
                reached=top >= target)


def counted(owner, name):
    """Count the calls of owner.name from now on (a list whose length is the count)."""
    calls, real = [], getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    setattr(owner, name, counting)
    return calls


def timed(compute, device, products):
    """The value compute() returns, its seconds and the Hessian-vector products it made."""
    sync(device)
    started, before = time.time(), len(products)
    value = compute()
    sync(device)
    seconds, n = time.time() - started, len(products) - before
    return dict(value=float(value), seconds=round(seconds, 3), products=n, seconds_per_product=round(seconds / n, 4))


def bench_matmul(args, device, n=2048, min_seconds=3.0):
    """GFLOP/s of n×n matrix products in fp32 and in bf16: the most the device reaches on its friendliest
    kernel, a practical peak beside the nominal one."""
    results = []
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up
        sync(device)
        count, started = 0, time.time()
        while time.time() - started < min_seconds:
            a @ b
            count += 1
        sync(device)
        gflops = 2 * n ** 3 * count / (time.time() - started) / 1e9
        peak = peak_tflops(args, device, precision)
        results.append(dict(what="matmul", precision=precision, n=n, gflop_per_s=round(gflops, 1),
                            peak_tflop_per_s=peak,
                            percent_of_peak=round(100 * gflops / 1e3 / peak, 1) if peak else None))
    return results


def precision_table(rows):
    """Markdown of `precision` (and `matmul`) results: every mode beside fp32 contiguous, the old CPU path."""
    md = ["| model | precision | memory format | train img/s | × fp32 | eval img/s | × fp32 | landscape points/s "
          "| × fp32 | train GFLOP/s | % of nominal peak |", "|---" * 11 + "|"]
    for r in rows:
        if r["what"] != "precision":
            continue
        base = next(b for b in rows if b["what"] == "precision" and b["model"] == r["model"]
                    and (b["precision"], b["memory_format"]) == PRECISION_MODES[0])
        cells = [r["model"], r["precision"], r["memory_format"]]
        for key in ("train_img_per_s", "eval_img_per_s", "landscape_points_per_s"):
            cells += [f"{r[key]:.4g}", f"{r[key] / base[key]:.2f}"]
        cells += [f"{r['train_gflop_per_s']:.0f}", f"{r['percent_of_peak']}" if r["percent_of_peak"] else "–"]
        md.append("| " + " | ".join(cells) + " |")
    matmul = [r for r in rows if r["what"] == "matmul"]
    parts = [f"{r['precision']} {r['gflop_per_s']:.0f} GFLOP/s ({r['percent_of_peak']} % of the nominal "
             f"{1e3 * r['peak_tflop_per_s']:.0f})" for r in matmul]
    return "\n".join(md + ([f"\n{matmul[0]['n']}×{matmul[0]['n']} matmul: " + ", ".join(parts) + "."]
                          if matmul else []))


def bench_precision(args, device):
    """Training, evaluation and landscape speed of each model in each (precision, memory format)."""
    images, labels = fake_images(args.n_images)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_dataset(tmp, images, labels)
        for model in args.models:
            cfg = dict(model_config(args), model=model)
            flops = train_flops_per_image(cfg, device)
            for precision, memory_format in PRECISION_MODES:
                numerics = common.Numerics(precision, memory_format)
                rates = precision_rates(args, cfg, numerics, tmp, device)
                peak = peak_tflops(args, device, precision)
                gflops = rates["train_img_per_s"] * flops / 1e9
                results.append(dict(what="precision", model=model, precision=precision,
                                    memory_format=memory_format, **rates, gflop_per_image=round(flops / 1e9, 4),
                                    train_gflop_per_s=round(gflops, 1), peak_tflop_per_s=peak,
                                    percent_of_peak=round(100 * gflops / 1e3 / peak, 1) if peak else None))
                print(json.dumps(results[-1]), flush=True)
    return results


def precision_rates(args, cfg, numerics, tmp, device):
    """train img/s (the last of --epochs epochs of common.train), eval img/s and landscape points/s."""
    run_cfg = common.make_config(
        model=cfg["model"], arch=args.arch, act="relu", width=args.width, data_dir=tmp, no_download=True,
        epochs=args.epochs, device=args.device, val=HELD_OUT,
        out=os.path.join(tmp, f"{cfg['model']}_{numerics.precision}_{numerics.memory_format}"))
    run_cfg.update(numerics.as_dict())
    common.train(run_cfg)
    train_rate = common.read_metrics(run_cfg["out"])[-1]["img_per_s"]
    torch.manual_seed(0)
    model = numerics.place(common.build_model(run_cfg), device).eval()
    x, y = fake_images(args.n_images)
    x, y, criterion = x.to(device), y.to(device), common.loss_fn("ce")
    common.evaluate(model, x[:common.EVAL_BATCH], y[:common.EVAL_BATCH], criterion, device, numerics=numerics)
    started = time.time()
    common.evaluate(model, x, y, criterion, device, numerics=numerics)
    eval_rate = len(y) / (time.time() - started)
    direction = common.direction_list(model, common.random_direction(model, torch.Generator().manual_seed(0)), device)
    base = [t.detach().clone() for _, t in common.landscape_tensors(model)]
    started = time.time()
    for c in np.linspace(-1, 1, args.points):
        common.evaluate_at(model, base, [(float(c), direction)], x, y, criterion, device, numerics)
    sync(device)
    return dict(train_img_per_s=round(train_rate, 1), eval_img_per_s=round(eval_rate, 1),
                landscape_points_per_s=round(args.points / (time.time() - started), 4), images=len(y))


# -- predicted wall time of run_all.sh profiles ------------------------------------------------

def measured_rates(cfg, device, cache, min_seconds=1.0):
    """(training img/s, evaluation img/s) of the model `cfg` describes at its batch size, measured once:
    one untimed warm-up step, then steps until at least `min_seconds` have passed."""
    key = (cfg["model"], cfg["arch"], cfg["width"], cfg["batch_size"])
    numerics = common.saved_numerics(cfg, device)
    if key not in cache:
        torch.manual_seed(0)
        model = numerics.place(common.build_model(cfg), device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = fake_images(max(cfg["batch_size"], common.EVAL_BATCH))
        x, y = numerics.inputs(x.to(device)), y.to(device)
        cache[key] = tuple(timed_steps(model, optimizer, x[:n], y[:n], train, device, min_seconds, numerics)
                           for n, train in ((cfg["batch_size"], True), (common.EVAL_BATCH, False)))
    return cache[key]


def timed_steps(model, optimizer, x, y, train, device, min_seconds, numerics):
    model.train(train)
    steps, started = -1, None
    while started is None or time.time() - started < min_seconds:
        with torch.set_grad_enabled(train), numerics.autocast(device):
            loss = F.cross_entropy(model(x).float(), y)
        if train:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        steps += 1
        started = started or time.time()  # after the warm-up step
    return steps * len(y) / (time.time() - started)


def train_config(flags, task2=False):
    """The config a training job's flags resolve to (unknown flags, such as --probe-every, ignored)."""
    task = "task2" if task2 else "task1"
    parser = common.train_parser("", task)
    return common.make_config(task, **vars(parser.parse_known_args(flags)[0]))


def bn_analysis_runs(flags):
    """A BN analysis job's training configs (every model x lr x seed) and the extra cost of its probes and
    Hessians per training step, in training images per image (each pass counted as a training step)."""
    args = bn_analysis.parse_args(flags)
    cfg = bn_analysis.run_config(args, args.models[0], args.lrs[0], os.path.join("runs", "bn_analysis"))
    probe = (len(args.probe_etas) + 1) / args.probe_every  # a gradient at θ and one at every η
    hessian = 2 * args.sharpness_iters * args.sharpness_images / cfg["batch_size"] / args.sharpness_every \
        if args.sharpness_every else 0.0  # a Hessian-vector product costs about two passes
    return [dict(cfg, model=m) for m in args.models for _ in args.lrs for _ in range(args.seeds)], probe + hessian


def training_seconds(job, device, cache, min_seconds=1.0):
    """One training job (or every run of a BN analysis): steps, validation every epoch, test twice (never under
    --no-test), and with --tta flip best.pt's validation and test on image and mirror."""
    script, flags = job[0], job[1:]
    cfg = train_config(flags, task2=script.startswith("task2"))
    runs, probe_cost = [cfg], 0.0
    if script.endswith("bn_analysis.py"):
        runs, probe_cost = bn_analysis_runs(flags)
        cfg = runs[0]
    n_val = min(cfg["val"], 5000)
    n_train = min(cfg["subset"] or 50000, 50000 - n_val)
    steps_per_epoch = max(1, n_train // cfg["batch_size"])
    steps = cfg.get("steps") or steps_per_epoch * cfg["epochs"]
    images, epochs = steps * cfg["batch_size"], -(-steps // steps_per_epoch)
    n_test = 0 if cfg.get("no_test") else cfg["test_subset"] or 10000
    evaluations = n_val * epochs + 2 * n_test + 2 * (n_val + n_test) * (cfg.get("tta", "none") != "none")
    return sum(images * (1 + probe_cost) / train_rate + evaluations / eval_rate
               for train_rate, eval_rate in (measured_rates(c, device, cache, min_seconds) for c in runs))


def hessian_passes(flags):
    """Training-pass equivalents per evaluation image of a landscape job's Hessian flags (a Hessian-vector
    product costs about two passes): Lanczos extremes, the trace's probes, the density's steps, per block both."""
    value = lambda name, default: int(reproduce.option(flags, name) or default)  # noqa: E731
    iters, probes = value("--hessian-iters", "20"), value("--trace-probes", "16")
    passes = iters * ("--hessian" in flags) + probes * ("--hessian-trace" in flags) + \
        value("--slq-probes", "4") * value("--slq-steps", "30") * ("--hessian-density" in flags) + \
        PER_BLOCK_BLOCKS * (iters + probes) * ("--per-block" in flags)
    return 2 * passes * value("--repeats", "1")


def landscape_seconds(flags, device, cache, min_seconds=1.0):
    """A surface, path plane or interpolation: every point one evaluation of --n-items images; the Hessian's
    products; the model from its run's saved config (--ckpt, or the --trajectory run's last.pt)."""
    ckpt = reproduce.option(flags, "--ckpt") or os.path.join(reproduce.option(flags, "--trajectory"), "last.pt")
    cfg = common.load_json(os.path.join(os.path.dirname(ckpt), "config.json"))
    x = int((reproduce.option(flags, "--x") or "-1:1:51").split(":")[2])
    y = x if "--trajectory" in flags else int((reproduce.option(flags, "--y") or "0:0:1").split(":")[2])
    items = int(reproduce.option(flags, "--n-items") or "10000")
    train_rate, eval_rate = measured_rates(cfg, device, cache, min_seconds)
    return x * y * items / eval_rate + hessian_passes(flags) * items / train_rate


def job_seconds(job, device, cache, min_seconds=1.0):
    """The predicted wall time of one job line of the plan; a script without a model is a ValueError."""
    script, flags = job[0], job[1:]
    if script.endswith(("train.py", "bn_analysis.py")):
        return training_seconds(job, device, cache, min_seconds)
    if script.endswith("landscape.py"):
        return landscape_seconds(flags, device, cache, min_seconds)
    if script.endswith("visualize.py"):
        return VISUALIZE_SECONDS
    raise ValueError(f"no prediction for {script}")


def finish_on_paper(jobs):
    """A finished result.json, config.json and (empty) best.pt for every training job, so that the plan's later
    phases list their jobs; the grid's standard ReLU CE SGD run is made the best (the slower ResVGG16: errs long)."""
    for script, *flags in (job for job in jobs if job[0].endswith("train.py")):
        cfg, out = common.parse_config(script, flags), reproduce.option(flags, "--out")
        best = os.path.basename(out) == reproduce.grid_name("standard", "relu", "ce", "sgd")
        os.makedirs(out, exist_ok=True)
        common.write_json(os.path.join(out, "config.json"), cfg)
        common.write_json(os.path.join(out, "result.json"), dict(status="completed", best_val_acc=1.0 if best
                                                                 else 0.5, test_acc_at_best_val=0.5, config=cfg))
        open(os.path.join(out, "best.pt"), "w").close()  # the plan asks for checkpoints by name only


def predict_jobs(profile, device, cache, seeds=1, min_seconds=1.0, done_in=None):
    """[(phase, job, seconds)] for every job of the profile's plan (with `seeds` seeds), each phase planned on
    the results the earlier ones would leave; done_in: a results folder whose finished jobs take 0 s (not timed)."""
    predicted = []
    with tempfile.TemporaryDirectory() as out:
        for phase in reproduce.PHASES:
            for job in reproduce.plan(phase, profile, out, ".", seeds):  # a job may read the one before it
                done = done_in and finished_in(done_in, job, out)
                predicted.append((phase, job, 0.0 if done else job_seconds(job, device, cache, min_seconds)))
                finish_on_paper([job])
    return predicted


def predict_profile(profile, device, cache, seeds=1, min_seconds=1.0, done_in=None):
    """Seconds per phase of a profile (each model's rates timed for min_seconds); done_in: a results folder
    whose finished runs, analyses, surfaces and figures are not counted."""
    seconds = {}
    for phase, job, s in predict_jobs(profile, device, cache, seeds, min_seconds, done_in):
        seconds[phase] = seconds.get(phase, 0.0) + s
    return seconds


def finished_in(results, job, planned_out):
    """Whether a job planned into `planned_out` is finished in `results` (its --out at the same place there):
    a finished run, a BN analysis whose every run is reused, a complete surface or filter figure."""
    script, *args = job
    folder = os.path.join(results, os.path.relpath(reproduce.option(args, "--out"), planned_out))
    if script.endswith("bn_analysis.py"):
        out_at = args.index("--out") + 1
        return bn_analysis.analysis_finished([*args[:out_at], folder, *args[out_at + 1:]])
    if script.endswith(("landscape.py", "visualize.py")):
        return reproduce.follower_complete(folder, script)
    result = reproduce.read_result(folder)
    return bool(result) and result["status"] in reproduce.FINISHED


def eta_line(prediction):
    phases = ", ".join(f"{k} {common.format_seconds(v)}" for k, v in prediction["phases"].items() if v)
    if not phases:
        return f"predicted wall time of --profile {prediction['profile']}: nothing left to run (every job finished)"
    return (f"predicted wall time of --profile {prediction['profile']}: {prediction['wall']} ({phases}; rates "
            f"measured now on {prediction['device']}{'; finished jobs left out' if prediction['left_out'] else ''})")


def bench_predict(args, device):
    """Per profile the predicted seconds, in all and per phase, from rates measured here and now."""
    cache, results = {}, []
    for profile in args.profiles:
        seconds = predict_profile(profile, device, cache, args.seeds, args.min_seconds, args.done_in)
        results.append(dict(what="predict", profile=profile, seeds=args.seeds, left_out=bool(args.done_in),
                            seconds=round(sum(seconds.values())),
                            wall=common.format_seconds(sum(seconds.values())),
                            phases={k: round(v) for k, v in seconds.items()}))
    return results


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_table(inputs):
    """The precision table of the JSON result files `inputs`; exit code."""
    try:
        rows = [r for path in inputs for r in common.load_json(path)]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError("each file must hold a JSON list of result objects")
        print(precision_table(rows))
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        return common.fail(common.UsageError(f"--inputs: not precision/matmul results ({type(e).__name__}: {e})"))
    return 0


def check_args(p, args):
    """argparse's error (exit 2, one line) for a value that would crash or print nonsense later."""
    try:
        args.peak_tflops = {k: float(v) for k, v in (item.split("=") for item in args.peak_tflops)}
    except ValueError:
        p.error("--peak-tflops takes PRECISION=TFLOPS items, e.g. bf16=0.5")
    if not all(math.isfinite(v) and v > 0 for v in args.peak_tflops.values()):
        p.error("--peak-tflops: each peak must be a positive finite number of TFLOP/s")
    if args.n_images < 1 or args.epochs < 1 or args.points < 1:
        p.error("--n-images, --epochs and --points must be at least 1")
    if args.what in ("train", "precision") and args.n_images <= HELD_OUT:
        p.error(f"--n-images {args.n_images}: {args.what} holds {HELD_OUT} images out for validation; give more")
    if args.seeds < 1 or not args.min_seconds > 0:
        p.error("--seeds must be at least 1 and --min-seconds positive")
    if not (math.isfinite(args.width) and args.width > 0):
        p.error(f"--width {args.width}: must be a positive finite multiplier")
    return args


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["train", "landscape", "predict", "precision", "matmul", "hessian", "table"])
    p.add_argument("--hessian-iters", type=int, default=20, help="hessian: Lanczos / power iterations at most")
    p.add_argument("--hessian-tol", type=float, default=1e-3, help="hessian: relative tolerance of the top")
    p.add_argument("--trace-probes", type=int, default=16, help="hessian: Hutchinson probes")
    p.add_argument("--inputs", nargs="+", default=[], help="table: JSON files of precision and matmul results")
    p.add_argument("--models", nargs="+", default=["resvgg16", "vgg_a"], choices=common.MODELS,
                   help="precision: the models to measure")
    p.add_argument("--peak-tflops", nargs="*", default=[], metavar="PRECISION=TFLOPS",
                   help="precision: the device's peak, e.g. bf16=0.5 fp32=0.25 (default: module docstring)")
    p.add_argument("--profiles", nargs="+", default=["quick", "cpu"], choices=sorted(reproduce.PROFILES),
                   help="predict: the run_all.sh profiles to predict")
    p.add_argument("--seeds", type=int, default=1, help="predict: as run_all.sh --seeds")
    p.add_argument("--min-seconds", type=float, default=1.0, help="predict: time each model this long")
    p.add_argument("--eta", action="store_true", help="predict: one line for a person instead of JSON")
    p.add_argument("--done-in", metavar="DIR", help="predict: leave out the jobs finished in this results folder")
    p.add_argument("--model", default="resvgg16", choices=common.MODELS)
    p.add_argument("--arch", default="light", choices=sorted(common.RESVGG16_ARCHS))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--n-images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2, help="train: the last epoch's rate is reported")
    p.add_argument("--points", type=int, default=8, help="landscape: grid points to time")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive pipeline")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true")
    common.add_precision_arg(p)
    p.add_argument("--no-naive", action="store_true", help="train: time only our pipeline")
    p.add_argument("--out", help="also write the results as a JSON list here")
    args = check_args(p, p.parse_args(argv))
    if args.what == "table":
        return print_table(args.inputs)
    device = common.resolve_device(args.device)
    results = dict(train=bench_train, landscape=bench_landscape, predict=bench_predict, precision=bench_precision,
                   matmul=bench_matmul, hessian=bench_hessian)[args.what](args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    for r in results:
        r.update(device=name, torch=torch.__version__)
        if args.what in ("train", "landscape", "precision", "hessian"):  # precision rows name their own model
            r.update(arch=args.arch, width=args.width, model=r.get("model", args.model))
        print(eta_line(r) if args.eta else json.dumps(r), flush=True)
    if args.out:
        common.write_json(args.out, results)


if __name__ == "__main__":
    sys.exit(main())
