#!/usr/bin/env bash
# Reproduce every table and figure of the report: bash run_all.sh --profile full|quick|smoke
#   --data-dir DIR      CIFAR-10 folder (default $CIFAR10_DIR or ./data; downloaded when missing)
#   --out DIR           results folder (default results/<profile>)
#   --gpus 0,1,...      spread independent runs over these GPUs, one run per GPU at a time
#   --update-readme     put the generated tables into README.md
# Rerunning skips finished runs and resumes interrupted ones. The jobs of each phase come from the one
# experiment plan in task2/reproduce.py (`python task2/reproduce.py plan PHASE --profile P --out DIR`).
set -uo pipefail
cd "$(dirname "$0")"
profile=quick data_dir=${CIFAR10_DIR:-data} out="" gpus="" update_readme=""
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --profile) need_value "$@"; profile=$2; shift 2 ;;
    --data-dir) need_value "$@"; data_dir=$2; shift 2 ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --gpus) need_value "$@"; gpus=$2; shift 2 ;;
    --update-readme) update_readme=--update-readme; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
out=${out:-results/$profile}
plan() { $PY task2/reproduce.py plan "$1" --profile "$profile" --out "$out" --data-dir "$data_dir"; }
plan train > /dev/null || exit 2  # an unknown profile stops here, before anything is written
mkdir -p "$out/runs" "$out/logs"
failures="$out/logs/failures.txt"; : > "$failures"
started=$(date +%s)

# run_phase NAME: plan the phase's jobs into $out/logs/NAME.jobs (one command line each), then run them
# round robin over --gpus with one worker per GPU, or one after another. Ctrl-C (exit 130) stops the script.
run_phase() {
  local name=$1 file="$out/logs/$1.jobs" code=0
  plan "$name" > "$file" || { echo "plan $name" >> "$failures"; return; }
  echo "== $name: $(grep -c . "$file") jobs"
  if [ -z "$gpus" ]; then
    $PY task2/reproduce.py jobs "$file" --failures "$failures" || code=$?
  else
    IFS=, read -ra ids <<< "$gpus"
    local i pids=()
    for i in "${!ids[@]}"; do
      awk -v n="${#ids[@]}" -v i="$i" '(NR - 1) % n == i' "$file" > "$file.$i"
      CUDA_VISIBLE_DEVICES=${ids[$i]} $PY task2/reproduce.py jobs "$file.$i" --worker "[gpu ${ids[$i]}] " \
        --failures "$failures" > "$out/logs/$name.gpu${ids[$i]}.log" 2>&1 &
      pids+=($!)
    done
    # show each worker's progress lines; the full output stays in the worker's log
    tail -q -n +1 -f --pid=$$ "$out"/logs/"$name".gpu*.log 2>/dev/null | grep --line-buffered '^\[gpu' &
    for i in "${pids[@]}"; do wait "$i" || code=$?; done
    sleep 1
    pkill -P $$ -x tail 2>/dev/null
  fi
  if [ "$code" -eq 130 ]; then echo "interrupted: rerun the same command to resume"; exit 130; fi
}

# 1. Task 1 hyper-parameter search (report 4.1), the 24-config grid (4.3), Task 2 models
run_phase train
# 2. loss functions beyond the report on the best grid config (by validation accuracy), BN analysis
run_phase analysis
# 3. landscapes with Hessian sharpness, the SGD-Adam interpolation, first-layer filters of the best model
run_phase landscapes
# 4. tables and figures
$PY task2/reproduce.py report "$out" --profile "$profile" $update_readme || echo "report step" >> "$failures"
elapsed=$(( $(date +%s) - started ))
if [ -s "$failures" ]; then
  echo "== done in ${elapsed} s with $(wc -l < "$failures") failure(s):"; sed 's/^/  /' "$failures"
  exit 1
fi
echo "== done in ${elapsed} s, no failures: $out/tables.md, $out/figures/"
