"""Train one Task 2 model on CIFAR-10: VGG-A with or without BatchNorm, or the residual VGG-A.

    python task2/train.py --model vgg_a_bn --opt adam

Same flags, outputs and behaviour as task1/train.py (one shared training loop); Task 2 defaults:
Adam lr 1e-3 (SGD 0.01, momentum 0.9), 20 epochs, batch 128, no dropout. `--help` lists every flag.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

if __name__ == "__main__":
    sys.exit(common.train_main("task2/train.py"))
