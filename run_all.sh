#!/usr/bin/env bash
# Reproduce every table and figure of the report: bash run_all.sh --profile full|quick|cpu|smoke
#   (cpu-full: the report's headline runs at full scale on a CPU and the SGD checkpoints' surfaces, resumable)
#   --data-dir DIR      CIFAR-10 folder (default $CIFAR10_DIR or ./data; downloaded when missing)
#   --out DIR           results folder (default results/<profile>)
#   --seeds N           train every Task 1 and Task 2 job with seeds 0 .. N-1 (default 1)
#   --gpus 0,1,...      spread independent runs over these GPUs, one run per GPU at a time
#   --phase P           run only phase P: 1 (train), 2 (analysis), 3 (landscapes) or 4 (report)
#   --shard K/N         with --phase 1-3: only every N-th job of the phase, starting at job K (0 <= K < N)
#   --update-readme     put the generated tables into README.md
#   --no-eta            skip the predicted wall time at the start (bench/throughput.py predict, ~10 s)
#   PYTHON=...          the interpreter (default: the repository's .venv when it exists, else python3)
# Rerunning skips finished runs and resumes interrupted ones. The jobs of each phase come from the one
# experiment plan in task2/reproduce.py (`python task2/reproduce.py plan PHASE --profile P --out DIR`).
set -uo pipefail
here=$PWD  # relative --out and --data-dir are the user's, resolved where the user stands
cd "$(dirname "$0")"
absolute() { case $1 in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }
profile=quick data_dir=${CIFAR10_DIR:+$(absolute "$CIFAR10_DIR")} out="" gpus="" update_readme="" seeds=1 phase=""
data_dir=${data_dir:-data} shard="" no_eta=""
usage() { echo "run_all.sh: $1 (see --help)" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || usage "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --profile) need_value "$@"; profile=$2; shift 2 ;;
    --data-dir) need_value "$@"; data_dir=$(absolute "$2"); shift 2 ;;
    --out) need_value "$@"; out=$(absolute "$2"); shift 2 ;;
    --seeds) need_value "$@"; seeds=$2; shift 2 ;;
    --gpus) need_value "$@"; gpus=$2; shift 2 ;;
    --phase) need_value "$@"; phase=$2; shift 2 ;;
    --shard) need_value "$@"; shard=$2; shift 2 ;;
    --update-readme) update_readme=--update-readme; shift ;;
    --no-eta) no_eta=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) usage "unknown argument $1" ;;
  esac
done
case $phase in
  1) phase=train ;; 2) phase=analysis ;; 3) phase=landscapes ;; 4) phase=report ;;
  ""|train|analysis|landscapes|report) ;;
  *) usage "--phase must be 1, 2, 3 or 4" ;;
esac
tag=""  # names this process's job lists and logs, so shards sharing --out never write the same file
if [ -n "$shard" ]; then
  [[ $shard =~ ^([0-9]+)/([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -lt "${BASH_REMATCH[2]}" ] \
    || usage "--shard must be K/N with 0 <= K < N"
  [ -n "$phase" ] && [ "$phase" != report ] || usage "--shard needs --phase 1, 2 or 3"
  shard_k=${BASH_REMATCH[1]} shard_n=${BASH_REMATCH[2]} tag=".shard${BASH_REMATCH[1]}of${BASH_REMATCH[2]}"
fi
# the interpreter: $PYTHON when set, else the repository's .venv (README's set-up), else python3
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
echo "run_all.sh: using $PY ($($PY --version 2>&1))"  # no torch import: it would add seconds to every call
out=${out:-results/$profile}
plan() { $PY task2/reproduce.py plan "$1" --profile "$profile" --out "$out" --data-dir "$data_dir" --seeds "$seeds"; }
plan train > /dev/null || exit 2  # a wrong profile or seed count stops here, before anything is written
[ ! -e "$out" ] || [ -d "$out" ] || usage "--out $out is a file, not a folder"
if [ "$phase" = report ] && [ ! -d "$out/runs" ]; then
  echo "run_all.sh: $out holds no runs; nothing to report (check --out)" >&2; exit 2
fi
mkdir -p "$out/runs" "$out/logs" || exit 2
# one run_all.sh per --out at a time (shards take one each, by their tag): a second one says who holds it
lock="$out/.run_all$tag.lock"
exec 9>>"$lock"
if ! flock -n 9; then
  echo "run_all.sh: $out is in use by another run_all.sh (pid $(cat "$lock")); wait for it or use another --out" >&2
  exit 2
fi
echo $$ > "$lock"
# everything this run prints, stdout and stderr, also goes to <out>/run_all<tag>.log
exec > >(tee -a "$out/run_all$tag.log") 2> >(tee -a "$out/run_all$tag.log" >&2)
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') run_all.sh --profile $profile --out $out with $PY (log: $out/run_all$tag.log)"
# SIGTERM / Ctrl-C reach the job runners too: each saves its run and stops after the current step
children=()
stop_children() {
  trap - TERM INT
  if [ ${#children[@]} -gt 0 ]; then
    kill -TERM "${children[@]}" 2>/dev/null
    wait "${children[@]}"  # the job runners only: a bare wait would wait for the log's tee, which waits for us
  fi
  echo "interrupted: rerun the same command to resume"
  exit 130
}
trap stop_children TERM INT
failures="$out/logs/failures$tag.txt"; : > "$failures"
started=$(date +%s)
if [ -z "$no_eta" ] && [ "$phase" != report ]; then  # from rates timed now, on this machine; a guess, not a limit
  $PY bench/throughput.py predict --profiles "$profile" --seeds "$seeds" --min-seconds 0.2 --eta --done-in "$out" \
    || echo "(no prediction of the wall time)"
fi

# deal N K: every N-th job line from stdin, starting at job K; an indented line (a surface of the checkpoint the
# job before it writes) goes with that job
deal() { awk -v n="$1" -v k="$2" 'NR == 1 || !/^ / {g++} (g - 1) % n == k'; }

# run_phase NAME: plan the phase's jobs into $out/logs/NAME.jobs (one command line each; with --shard only
# this shard's share), then run them round robin over --gpus with one worker per GPU, or one after another.
# Ctrl-C (exit 130) stops the script.
run_phase() {
  local name=$1 file="$out/logs/$1$tag.jobs" code=0 listed
  plan "$name" > "$file.all" || { echo "plan $name" >> "$failures"; return; }
  deal "${shard_n:-1}" "${shard_k:-0}" < "$file.all" > "$file" && rm "$file.all"
  echo "== $name$tag: $(grep -c . "$file") jobs"
  listed=$(wc -l < "$failures")
  if [ -z "$gpus" ]; then
    $PY task2/reproduce.py jobs "$file" --failures "$failures" &
    children=($!)
    wait $! || code=$?
  else
    IFS=, read -ra ids <<< "$gpus"
    local i pids=()
    for i in "${!ids[@]}"; do
      deal "${#ids[@]}" "$i" < "$file" > "$file.$i"
      CUDA_VISIBLE_DEVICES=${ids[$i]} $PY task2/reproduce.py jobs "$file.$i" --worker "[gpu ${ids[$i]}] " \
        --failures "$failures" > "$out/logs/$name$tag.gpu${ids[$i]}.log" 2>&1 &
      pids+=($!)
    done
    children=("${pids[@]}")
    # show each worker's progress lines; the full output stays in the worker's log
    tail -q -n +1 -f --pid=$$ "$out"/logs/"$name$tag".gpu*.log 2>/dev/null | grep --line-buffered '^\[gpu' &
    for i in "${pids[@]}"; do wait "$i" || code=$?; done
    sleep 1
    pkill -P $$ -x tail 2>/dev/null
  fi
  if [ "$code" -eq 130 ]; then echo "interrupted: rerun the same command to resume"; exit 130; fi
  # a job runner that failed without listing a job (it crashed) is a failure too, never "no failures"
  if [ "$code" -ne 0 ] && [ "$(wc -l < "$failures")" -eq "$listed" ]; then
    echo "$name$tag: the job runner stopped (exit $code; see the log)" >> "$failures"
  fi
}

# 1. Task 1 hyper-parameter search (report 4.1), the 24-config grid (4.3), Task 2 models
[ -z "$phase" ] || [ "$phase" = train ] && run_phase train
# 2. more seeds and other losses for the best grid config (by validation accuracy), BN analysis
[ -z "$phase" ] || [ "$phase" = analysis ] && run_phase analysis
# 3. landscapes with Hessian sharpness, the SGD-Adam interpolation, first-layer filters of the best model
[ -z "$phase" ] || [ "$phase" = landscapes ] && run_phase landscapes
# 4. tables and figures
if [ -z "$phase" ] || [ "$phase" = report ]; then
  $PY task2/report.py "$out" --profile "$profile" $update_readme || echo "report step" >> "$failures"
fi
elapsed=$(( $(date +%s) - started ))
if [ -s "$failures" ]; then
  echo "== done in ${elapsed} s with $(wc -l < "$failures") failure(s):"; sed 's/^/  /' "$failures"
  exit 1
fi
echo "== done in ${elapsed} s, no failures${phase:+ (phase $phase$tag)}: $out/tables.md, $out/figures/"
