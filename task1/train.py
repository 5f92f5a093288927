"""Train one ResVGG16 configuration on CIFAR-10 (Task 1).

    python task1/train.py --arch light --act leaky_relu --opt sgd

`--help` lists every flag. Ctrl-C saves last.pt; rerun with --out DIR --resume to continue.

Files in the run folder (--out, default runs/<name from the config>):
  config.json    every flag, with the per-optimizer defaults filled in
  metrics.jsonl  one JSON object per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr (at the
                 epoch's first step), img_per_s, epoch_seconds, elapsed
  result.json    status (completed | diverged | interrupted), best_val_acc, best_epoch,
                 test_acc_at_best_val, test_loss_at_best_val, final_test_acc, final_test_loss,
                 final_val_acc, convergence_epoch, epochs_run, epochs, test_images, params,
                 train_seconds, device, torch_version, config
  best.pt        weights at the best validation accuracy, with config and epoch
  last.pt        weights, optimizer, scheduler, RNG states and progress at the end or the interruption
  curves.png     loss and accuracy per epoch, train and validation
Checkpoints are written to a temporary file and renamed; non-finite numbers are written as null.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

if __name__ == "__main__":
    sys.exit(common.train_main("task1/train.py"))
