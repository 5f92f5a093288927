#!/bin/bash
# 2026-12-08: the cpu profile's three spectra in filter-normalized coordinates (#33), beside the committed raw ones.
# They read the two Task 2 Adam runs' best.pt, which are not committed: each run is trained again with the plan's
# command into a scratch folder, every epoch's losses, accuracies and lr must equal the committed run's (else
# stop: the raw and filter spectra would not be of one checkpoint), its best.pt goes beside the committed run
# (ignored by git), then the plan's three filter spectrum jobs run. From a worktree of the commit that plans them.
set -euo pipefail
# run from the root of a worktree of the commit that plans them (8950fd2): bash <this> R SCRATCH DATA
R=$1 SCRATCH=$2 DATA=$3  # results/cpu (absolute), a scratch folder, the data folder
plan() { .venv/bin/python task2/reproduce.py plan "$1" --profile cpu --out "$R" --data-dir "$DATA" 2>/dev/null; }
for run in t2_vgg_a_adam t2_vgg_a_bn_adam; do
  line=$(plan train | grep -- "--out $R/runs/$run\$")
  echo "$(date -u +%FT%T) retrain: ${line% --out *} --out $SCRATCH/$run"
  .venv/bin/python ${line% --out *} --out "$SCRATCH/$run" --overwrite
  .venv/bin/python - "$R/runs/$run/metrics.jsonl" "$SCRATCH/$run/metrics.jsonl" <<'PY'
import json, sys
keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
old, new = ([{k: json.loads(line)[k] for k in keys} for line in open(path)] for path in sys.argv[1:])
print("every epoch equal to the committed run's" if old == new else f"DIFFERENT:\n{old}\n{new}")
sys.exit(old != new)
PY
  cp "$SCRATCH/$run/best.pt" "$R/runs/$run/best.pt"
done
plan landscapes | grep -E -- "--out $R/landscapes/spectrum_[a-z_]+_filter$" > "$R/logs/filter_spectra_2026-12-08.jobs"
echo "$(date -u +%FT%T) $(wc -l < "$R/logs/filter_spectra_2026-12-08.jobs") spectrum jobs"
.venv/bin/python task2/reproduce.py jobs "$R/logs/filter_spectra_2026-12-08.jobs"
rm "$R/runs/t2_vgg_a_adam/best.pt" "$R/runs/t2_vgg_a_bn_adam/best.pt"  # as committed: no checkpoints
echo "$(date -u +%FT%T) done"
