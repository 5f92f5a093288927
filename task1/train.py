"""Train one ResVGG16 configuration on CIFAR-10 (Task 1).

    python task1/train.py --arch light --act leaky_relu --opt sgd

Writes runs/<name>/{config.json, metrics.jsonl, result.json, best.pt, last.pt, curves.png}.
Ctrl-C saves last.pt; rerun with --out DIR --resume to continue. `--help` lists every flag.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

if __name__ == "__main__":
    sys.exit(common.train_main("task1/train.py"))
