"""The CUDA checks: bf16 + channels_last, --compile, landscapes, the probe, resume and checkpoints on a GPU.

    python bench/cuda_checks.py                 # every check on CUDA (the GPU machine has no pytest)
    python bench/cuda_checks.py --device cpu    # the same code on the CPU, where CUDA-vs-CPU checks are trivial

Each check_* function takes (device, tmp folder) and raises AssertionError when the GPU path disagrees with
the reference; test_smoke.py runs them under pytest when CUDA is present. Tiny models on fake data.
Tolerances: on CUDA convolutions may use TF32 and cuDNN picks non-deterministic kernels, so results that are
bitwise equal on the CPU are compared to a relative tolerance here (stated with each check).
"""
import argparse
import os
import signal
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench"), os.path.join(ROOT, "task2")]
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bn_analysis  # noqa: E402
import common  # noqa: E402
import landscape  # noqa: E402
import throughput  # noqa: E402

TINY = ["--arch", "light", "--width", "0.125", "--batch-size", "32", "--val", "64", "--no-download"]


def fake_data(tmp):
    """A 320-image fake CIFAR-10 folder (the first 100 also as the test set); made once per tmp folder."""
    if not os.path.isdir(os.path.join(tmp, "data", common.CIFAR10_FOLDER)):
        throughput.write_fake_dataset(os.path.join(tmp, "data"), *throughput.fake_images(320))
    return os.path.join(tmp, "data")


def config(tmp, device, name, *flags, task2=False):
    return common.parse_config("task2/train.py" if task2 else "task1/train.py",
                               [*TINY, "--device", device.type, "--data-dir", fake_data(tmp),
                                "--out", os.path.join(tmp, name), *flags])


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def check_bf16_channels_last_step(device, tmp):
    """One training step's loss in bf16 autocast + channels_last equals fp32 within 2%."""
    cfg = config(tmp, device, "unused")
    x, y = throughput.fake_images(64)
    x, y = x.to(device), y.to(device)
    losses = []
    for numerics in (common.FP32, common.Numerics("bf16", "channels_last")):
        torch.manual_seed(0)
        model = numerics.place(common.build_model(cfg), device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):  # the second loss is after one step
            with numerics.autocast(device):
                loss = torch.nn.functional.cross_entropy(model(numerics.inputs(x)).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    assert close(*losses, 0.02), f"fp32 loss {losses[0]:.5f} vs bf16 + channels_last {losses[1]:.5f}"


def check_compile_trains(device, tmp):
    """A --compile run finishes with a finite loss (CUDA only: test_compile_trains_on_the_cpu covers the CPU)."""
    if device.type != "cuda":
        return "skipped on the CPU"
    result = common.train(config(tmp, device, "compiled", "--epochs", "1", "--compile"))
    history = common.read_metrics(os.path.join(tmp, "compiled"))
    assert result["status"] == "completed" and np.isfinite(history[-1]["train_loss"]), result["status"]


def trained_checkpoint(tmp, device):
    if not os.path.exists(os.path.join(tmp, "base", "best.pt")):
        common.train(config(tmp, device, "base", "--epochs", "1"))
    return os.path.join(tmp, "base", "best.pt")


def check_landscape_matches_cpu(device, tmp):
    """A 3 x 3 fp32 surface on the device equals the CPU one within 1% (TF32 convolutions on CUDA)."""
    ckpt = trained_checkpoint(tmp, device)
    losses = []
    for dev in (device.type, "cpu"):
        out = os.path.join(tmp, f"surface_{dev}")
        code = landscape.main(["--ckpt", ckpt, "--x", "-1:1:3", "--y", "-1:1:3", "--n-items", "100", "--precision",
                               "fp32", "--data-dir", fake_data(tmp), "--no-download", "--device", dev, "--out", out,
                               "--overwrite"])
        assert code == 0, f"landscape on {dev} exited {code}"
        with np.load(os.path.join(out, "surface.npz")) as s:
            losses.append(s["loss"])
    assert np.allclose(losses[0], losses[1], rtol=0.01, atol=0), f"max difference {np.abs(losses[0] - losses[1]).max()}"


def check_probe_leaves_training_alone(device, tmp):
    """A probed Task 2 run ends with the unprobed run's weights (within 1e-4 relative on CUDA: cuDNN)."""
    states = []
    for probed in (False, True):
        cfg = config(tmp, device, f"t2_probed_{probed}", "--model", "vgg_a_bn", "--epochs", "1", "--overwrite",
                     task2=True)
        hook = bn_analysis.BNProbe(common.loss_fn("ce"), [1e-3, 1e-2], every=2, device=device) if probed else None
        common.train(cfg, step_hook=hook)
        states.append(torch.load(os.path.join(cfg["out"], "last.pt"), map_location="cpu", weights_only=True)["model"])
    rel = 0.0 if device.type == "cpu" else 1e-4
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            diff = (tensor - states[1][name]).abs().max().item()
            assert diff <= rel * max(tensor.abs().max().item(), 1e-12), f"{name} differs by {diff}"


def interrupt_at_step(real_make_optimizer, n):
    """make_optimizer whose optimizer sends this process a real SIGINT right after its n-th step."""
    def make(cfg, params):
        optimizer, steps = real_make_optimizer(cfg, params), [0]

        def hook(*_):
            steps[0] += 1
            if steps[0] == n:
                os.kill(os.getpid(), signal.SIGINT)
        optimizer.register_step_post_hook(hook)
        return optimizer
    return make


def check_resume_and_cpu_load(device, tmp):
    """last.pt of an interrupted run resumes on the device to the uninterrupted run's metrics (test loss within
    1% on CUDA), and the device's best.pt loads on the CPU with the same test loss (2%: bf16 on CUDA)."""
    reference = common.train(config(tmp, device, "ref", "--epochs", "2", "--overwrite"))
    real_make_optimizer = common.make_optimizer

    common.make_optimizer = interrupt_at_step(real_make_optimizer, 5)  # of 9 steps per epoch
    try:
        assert common.train(config(tmp, device, "cut", "--epochs", "2", "--overwrite"))["status"] == "interrupted"
    finally:
        common.make_optimizer = real_make_optimizer
    resumed = common.train(config(tmp, device, "cut", "--epochs", "2", "--resume"))
    exact = device.type == "cpu"
    for key in ("best_val_acc", "final_test_loss") if exact else ("final_test_loss",):  # accuracy may flip on CUDA
        assert close(resumed[key], reference[key], 0 if exact else 0.01), (key, resumed[key], reference[key])
    model, ckpt = common.load_checkpoint(os.path.join(tmp, "ref", "best.pt"), "cpu")
    numerics, cpu = common.saved_numerics(ckpt["config"], torch.device("cpu")), torch.device("cpu")
    data = common.load_cifar10(fake_data(tmp), download=False)
    loss, _ = common.evaluate(numerics.place(model, cpu), data["test_x"], data["test_y"], common.loss_fn("ce"), cpu,
                              numerics=numerics)
    assert close(loss, reference["test_loss_at_best_val"], 1e-9 if exact else 0.02), (loss, reference)


CHECKS = [check_bf16_channels_last_step, check_landscape_matches_cpu, check_probe_leaves_training_alone,
          check_resume_and_cpu_load, check_compile_trains]  # compiling takes longest: last, in case of the cap


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing checked (use --device cpu to run the same code on the CPU)")
        return 2
    device, passed, failed = torch.device(args.device), 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for check in CHECKS:
            started = time.time()
            try:
                note = check(device, tmp)
                passed += 1
                print(f"PASS {check.__name__} ({time.time() - started:.1f} s){f': {note}' if note else ''}", flush=True)
            except Exception:  # a failed check is reported and the next one runs
                failed += 1
                print(f"FAIL {check.__name__}:\n{traceback.format_exc(limit=3)}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
