"""The cost of our CIFAR-10 copy, measured with a known recipe: airbench94 (PyPI `airbench` 0.1.8, 94.01 % on
the original CIFAR-10, mean of 1,000 runs) trained on a CIFAR-10 folder with its hyper-parameters unchanged.

    pip install airbench==0.1.8        # optional: only this script uses it, never the repository
    python bench/airbench_calibration.py --data-dir data --out results/cpu-full/airbench94.json

airbench is written for CUDA and fp16 (`.half().cuda()`, CUDA events, its own `cifar10/train.pt`, which it
makes through torchvision, whose MD5 check our JPEG-derived copy fails). Here its train.pt / test.pt are
written from the batch files of --data-dir, and on a CPU it runs ported, nothing else changed: the data in fp32,
the network's forward pass under bf16 autocast where the CPU computes bf16 fast (else fp32), a wall clock for
its CUDA events. Its whitening layer's covariance and eigendecomposition stay fp32 (in bf16 eigh returns NaN).
Prints test accuracy without and with its flip + translate TTA, and the wall time, as one JSON line.
--subset, --test-subset and --epochs make a quick check of the port, not a calibration.
"""
import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
import unittest.mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import common  # noqa: E402


class WallClockEvent:
    """torch.cuda.Event's timing interface on the CPU."""

    def __init__(self, enable_timing=True):
        self.at = None

    def record(self):
        self.at = time.perf_counter()

    def elapsed_time(self, end):  # milliseconds, as CUDA events report
        return 1e3 * (end.at - self.at)


def write_airbench_data(folder, data_dir, subset=0, test_subset=0):
    """<folder>/cifar10/train.pt and test.pt in airbench's format (uint8 images N×32×32×3, labels, classes)."""
    data = common.load_cifar10(data_dir, download=False)
    os.makedirs(os.path.join(folder, "cifar10"), exist_ok=True)
    for name, x, y, n in (("train", data["train_x"], data["train_y"], subset),
                          ("test", data["test_x"], data["test_y"], test_subset)):
        torch.save(dict(images=x[:n or None].permute(0, 2, 3, 1).contiguous(), labels=y[:n or None],
                        classes=data["classes"]), os.path.join(folder, "cifar10", f"{name}.pt"))


@contextlib.contextmanager
def ported(airbench, numerics):
    """airbench on the CPU: CifarLoader on the CPU in fp32, the net built without .half().cuda() and run under
    `numerics`' autocast (outputs fp32), CUDA events and synchronize replaced by the wall clock."""
    utils = sys.modules["airbench.utils"]
    real_loader, real_make = utils.CifarLoader, airbench.make_net94

    class CpuLoader(real_loader):
        def __init__(self, path, *args, gpu=0, **kwargs):
            super().__init__(path, *args, gpu="cpu", **kwargs)
            self.images = self.images.float()  # the fp16 values it has on a GPU, in fp32

    def make_net(*args, **kwargs):
        same = lambda module, *a, **k: module  # noqa: E731
        with unittest.mock.patch.object(torch.nn.Module, "half", same), \
                unittest.mock.patch.object(torch.nn.Module, "cuda", same):
            net = real_make(*args, **kwargs)
        forward = net.forward

        def autocast_forward(x):
            with numerics.autocast(torch.device("cpu")):
                return forward(x).float()
        net.forward = autocast_forward
        return net

    with unittest.mock.patch.object(utils, "CifarLoader", CpuLoader), \
            unittest.mock.patch.object(torch.cuda, "Event", WallClockEvent), \
            unittest.mock.patch.object(torch.cuda, "synchronize", lambda *a: None):
        yield CpuLoader, make_net


def calibrate(data_dir, subset=0, test_subset=0, device="auto", epochs=None):
    """Train airbench94 once on data_dir's images; returns the JSON record."""
    import airbench  # optional dependency of this script alone
    device = common.resolve_device(device)
    numerics = common.numerics_for("auto", device)
    hyp = sys.modules["airbench.lib_airbench94"].hyp
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        write_airbench_data(folder, data_dir, subset, test_subset)
        port = ported(airbench, numerics) if device.type == "cpu" else contextlib.nullcontext(
            (sys.modules["airbench.utils"].CifarLoader, airbench.make_net94))
        started = time.time()
        with port as (loader_class, make_net):
            train = loader_class("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                 altflip=True)
            model = airbench.train94(train, epochs=epochs or hyp["opt"]["train_epochs"], make_net=make_net,
                                     verbose=True)
            test = loader_class("cifar10", train=False, batch_size=2000)
            plain, tta = (airbench.evaluate(model, test, tta_level=level) for level in (0, 2))
        seconds = time.time() - started
    return dict(airbench=importlib.metadata.version("airbench"),
                recipe="airbench94, hyper-parameters unchanged", train_images=len(train.labels),
                epochs=epochs or hyp["opt"]["train_epochs"], test_images=len(test.labels), test_acc=plain, test_acc_tta=tta, wall_seconds=round(seconds, 1),
                device=common.device_name(device), precision=numerics.precision if device.type == "cpu" else "fp16",
                torch=torch.__version__, threads=torch.get_num_threads())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data"))
    p.add_argument("--out", help="also write the record as JSON here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--subset", type=int, default=0, help="a quick check: train on the first N images only")
    p.add_argument("--test-subset", type=int, default=0, help="a quick check: test on the first N images only")
    p.add_argument("--epochs", type=float, help="a quick check: this many epochs instead of airbench94's 9.9")
    args = p.parse_args(argv)
    try:
        record = calibrate(os.path.abspath(args.data_dir), args.subset, args.test_subset, args.device, args.epochs)
    except ImportError:
        return common.fail(common.UsageError("airbench is not installed: pip install airbench==0.1.8"))
    except common.USER_ERRORS as e:
        return common.fail(e)
    print(json.dumps(record), flush=True)
    if args.out:
        common.write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
