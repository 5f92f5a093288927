#!/usr/bin/env bash
# The GPU check: every CUDA path of the repository and its headline numbers, in one run of about 8 minutes.
#   bash bench/gpu_check.sh DATA_DIR OUT_DIR              # on the GPU machine (DATA_DIR holds cifar-10-batches-py)
#   bash bench/gpu_check.sh --dry-run DATA_DIR OUT_DIR    # the same steps on the CPU at a tiny scale (< 2 min)
# Steps, each with its own time cap (one that hits it records how far it got, and the script goes on):
#   env (versions) · cuda_checks (bench/cuda_checks.py) · throughput (ResVGG16 standard and light, ours eager
#   and compiled vs the naive DataLoader + PIL pipeline, TFLOP/s and % of peak) · headline job (60 epochs) ·
#   VGG-A and VGG-A + BN (Adam 1e-3, 20 epochs) · 51x51 surface on 2,000 images · torchrun NCCL == one process.
# OUT_DIR gets 8 files: summary.md, summary.json, env.txt, cuda_checks.log, steps.log, throughput.jsonl,
# default_curves.png, surface_3d.png. Checkpoints stay in a scratch folder that is removed at the end.
set -uo pipefail
dry=0
[ "${1:-}" = --dry-run ] && { dry=1; shift; }
[ $# -eq 2 ] || { echo "usage: bash bench/gpu_check.sh [--dry-run] DATA_DIR OUT_DIR" >&2; exit 2; }
data=$(realpath "$1") out=$(realpath -m "$2")
[ -d "$data/cifar-10-batches-py" ] || { echo "gpu_check.sh: no cifar-10-batches-py in $data" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cap_scale=1
if [ $dry = 1 ]; then  # tiny: width 0.125, a few hundred images, 1 epoch, 3x3 grid, CPU; caps x5 for busy CPUs
  cap_scale=5 dev=cpu scale=(--width 0.125 --subset 256 --val 64 --test-subset 256 --batch-size 32)
  t1_epochs=1 t2_epochs=1 grid=-1:1:3 items=100 tp=(--width 0.125 --n-images 256 --epochs 1 --workers 1) compile=()
  big_batch=()
else
  dev=cuda scale=() t1_epochs=60 t2_epochs=20 grid=-1:1:51 items=2000
  tp=(--n-images 16384 --epochs 2 --workers 8) compile=(--compile) big_batch=(--batch-size 2000)
fi
common=(--data-dir "$data" --no-download --device "$dev")
: > "$work/steps.tsv"

# step NAME CAP COMMAND...: run COMMAND under a time cap (SIGTERM, which training and landscapes turn into a
# saved stop), log its output to $work/NAME.log and record its outcome and wall time in steps.tsv
step() {
  local name=$1 cap=$2 code=0 started status
  shift 2
  started=$(date +%s)
  cap=$(( cap * cap_scale ))
  echo "== $name (cap ${cap} s): $*" | tee -a "$work/steps.log"
  timeout -s TERM -k 20 "$cap" "$@" >> "$work/$name.log" 2>&1 || code=$?
  status=ok
  [ $code -ne 0 ] && status="exit $code"
  [ $code -eq 124 ] && status="hit its ${cap} s cap"
  tail -n 25 "$work/$name.log" >> "$work/steps.log"
  local command="$*"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - started ))" "${command//[$'\t\n']/ }" \
    >> "$work/steps.tsv"
  echo "   $name: $status in $(( $(date +%s) - started )) s"
}

versions='import sys, torch, torchvision
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| torchvision", torchvision.__version__, "| device", gpu)'
step env 15 bash -c "nvidia-smi || echo 'nvidia-smi: not available'; $PY -c '$versions'"
step cuda_checks 60 $PY bench/cuda_checks.py --device "$dev"
step throughput_eager 40 bash -c "for arch in light standard; do $PY bench/throughput.py train --device $dev \
--arch \$arch ${tp[*]} --out $work/tp_eager_\$arch.json || exit 1; done"
step throughput_compiled 50 bash -c "for arch in light standard; do [ -z '${compile[*]}' ] && exit 0; \
$PY bench/throughput.py train --device $dev --arch \$arch ${tp[*]} --compile --no-naive \
--out $work/tp_compiled_\$arch.json || exit 1; done"
step default_job 130 $PY task1/train.py "${common[@]}" "${scale[@]}" --arch light --act leaky_relu --opt sgd \
  --epochs $t1_epochs --out "$work/default"
step vgg_a 45 $PY task2/train.py "${common[@]}" "${scale[@]}" --model vgg_a --opt adam --lr 1e-3 \
  --epochs $t2_epochs --out "$work/vgg_a"
step vgg_a_bn 45 $PY task2/train.py "${common[@]}" "${scale[@]}" --model vgg_a_bn --opt adam --lr 1e-3 \
  --epochs $t2_epochs --out "$work/vgg_a_bn"
surface=(--ckpt "$work/default/best.pt" --data-dir "$data" --no-download --device "$dev" --n-items "$items"
  "${big_batch[@]}")  # on the GPU, one evaluation batch per point
step surface 50 $PY task2/landscape.py "${surface[@]}" --x $grid --y $grid --out "$work/surface"
step surface_5x5 15 $PY task2/landscape.py "${surface[@]}" --x -1:1:5 --y -1:1:5 --out "$work/surface_5x5"
step torchrun_5x5 25 $PY -m torch.distributed.run --standalone --nproc_per_node 1 task2/landscape.py \
  "${surface[@]}" --x -1:1:5 --y -1:1:5 --out "$work/torchrun_5x5"
dry_flag=(); [ $dry = 1 ] && dry_flag=(--dry-run)
$PY bench/gpu_summary.py "$work" "$out" --data-dir "$data" "${dry_flag[@]}" || { echo "summary failed" >&2; exit 1; }
echo "== wrote $(ls "$out" | wc -l) files to $out"
