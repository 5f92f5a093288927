"""Speed of this repo's pipelines against the naive one most public versions use (a torchvision-style
Dataset of PIL images with per-sample transforms and a DataLoader, fp32), same model, same machine.

    python bench/throughput.py train --arch light --width 0.25 --n-images 2048
    python bench/throughput.py landscape --arch light --width 0.25 --n-images 1000 --points 6

train: images/s of the training step (ours: common.train, data on the device, per-batch augmentation,
bf16 + channels_last on CUDA). landscape: grid points/s (ours: common.evaluate_at on device-resident
data; naive: a model copy and a DataLoader pass per point, as in the reference implementation).
Prints one JSON line per pipeline; --out FILE also writes them as a JSON list.
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402


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
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=gen)


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


def model_config(args):
    return dict(model=args.model, arch=args.arch, act="relu", residual=True, width=args.width, dropout=0.5,
                num_classes=10)


def bench_train(args, device):
    images, labels = fake_images(args.n_images)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_dataset(tmp, images, labels)
        parser = common.add_train_args(argparse.ArgumentParser())
        cfg = common.config_from_args(parser.parse_args([
            "--model", args.model, "--arch", args.arch, "--width", str(args.width), "--data-dir", tmp,
            "--no-download", "--epochs", str(args.epochs), "--batch-size", "128", "--device", args.device,
            "--out", os.path.join(tmp, "run"), "--val", "100"] + (["--compile"] if args.compile else [])))
        common.train(cfg)
        history = common.read_metrics(os.path.join(tmp, "run"))
        results.append(dict(pipeline="ours", what="train", img_per_s=history[-1]["img_per_s"],
                            epochs=args.epochs, images=len(labels) - 100))
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
    return results


def bench_landscape(args, device):
    images, labels = fake_images(args.n_images)
    torch.manual_seed(0)
    model = common.build_model(model_config(args)).to(device).eval()
    criterion = common.loss_fn("ce")
    direction = common.direction_list(model, common.random_direction(model, torch.Generator().manual_seed(0)), device)
    base = [t.detach().clone() for _, t in common.landscape_tensors(model)]
    coords = np.linspace(-1, 1, args.points)
    dev_images, dev_labels = images.to(device), labels.to(device)
    common.evaluate_at(model, base, [(0.0, direction)], dev_images, dev_labels, criterion, device)  # warm-up
    sync(device)
    started = time.time()
    for c in coords:
        common.evaluate_at(model, base, [(float(c), direction)], dev_images, dev_labels, criterion, device)
    sync(device)
    ours = args.points / (time.time() - started)
    loader_data = PILDataset(images, labels, naive_transform(False))
    started = time.time()
    for c in coords:
        net = copy.deepcopy(model)
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["train", "landscape"])
    p.add_argument("--model", default="resvgg16", choices=common.MODELS)
    p.add_argument("--arch", default="light", choices=sorted(common.RESVGG16_ARCHS))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--n-images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2, help="train: the last epoch's rate is reported")
    p.add_argument("--points", type=int, default=8, help="landscape: grid points to time")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive pipeline")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", help="also write the results as a JSON list here")
    args = p.parse_args()
    device = common.resolve_device(args.device)
    results = (bench_train if args.what == "train" else bench_landscape)(args, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    for r in results:
        r.update(device=name, model=args.model, arch=args.arch, width=args.width, torch=torch.__version__)
        print(json.dumps(r), flush=True)
    if args.out:
        common.write_json(args.out, results)


if __name__ == "__main__":
    main()
