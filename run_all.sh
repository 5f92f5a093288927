#!/usr/bin/env bash
# Reproduce every table and figure of the report: bash run_all.sh --profile full|quick|smoke
#   --data-dir DIR      CIFAR-10 folder (default $CIFAR10_DIR or ./data; downloaded when missing)
#   --out DIR           results folder (default results/<profile>)
#   --gpus 0,1,...      spread independent runs over these GPUs, one run per GPU at a time
#   --update-readme     put the generated tables into README.md
# Rerunning skips finished runs and resumes interrupted ones. See README.md, "Reproducing the report".
set -uo pipefail
cd "$(dirname "$0")"
profile=quick data_dir=${CIFAR10_DIR:-data} out="" gpus="" update_readme=""
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --update-readme) update_readme=--update-readme; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
out=${out:-results/$profile}
case $profile in
  full)  t1_epochs=60 t2_epochs=20 bn_epochs=20 grid=-1:1:51 items=10000 interp=-0.5:1.5:41 hessian_iters=20
         common=() bn_extra=() ;;
  quick) t1_epochs=10 t2_epochs=10 bn_epochs=5 grid=-1:1:21 items=2000 interp=-0.5:1.5:21 hessian_iters=20
         common=() bn_extra=(--probe-every 25) ;;
  smoke) t1_epochs=1 t2_epochs=1 bn_epochs=1 grid=-1:1:5 items=100 interp=-0.5:1.5:5 hessian_iters=3
         common=(--device cpu --width 0.125 --subset 200 --val 100 --test-subset 500 --batch-size 32) bn_extra=(--probe-every 2) ;;
  *) echo "run_all.sh: --profile must be full, quick or smoke" >&2; exit 2 ;;
esac
ls_device=(); [ "$profile" = smoke ] && ls_device=(--device cpu)
mkdir -p "$out/runs" "$out/logs"
failures="$out/logs/failures.txt"; : > "$failures"
data=(--data-dir "$data_dir")
started=$(date +%s)

# run_phase NAME: run the jobs of $out/logs/NAME.jobs (one command line each), spread round robin over
# --gpus with one worker per GPU, or one after another. Ctrl-C (exit 130) stops the whole script.
run_phase() {
  local name=$1 file="$out/logs/$1.jobs" code=0
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

t1() { echo "task1/train.py ${data[*]} ${common[*]} --epochs $t1_epochs $*"; }
t2() { echo "task2/train.py ${data[*]} ${common[*]} --epochs $t2_epochs $*"; }
surface() { echo "task2/landscape.py ${data[*]} ${ls_device[*]} --n-items $items --hessian-iters $hessian_iters $*"; }

# 1. Task 1 hyper-parameter search (report 4.1), the 24-config grid (4.3), Task 2 models
{
  for lr in 0.1 0.05; do t1 --arch standard --opt sgd --lr $lr --wd 5e-4 --out "$out/runs/hp_sgd_lr${lr}_wd5e-4"; done
  t1 --arch standard --opt sgd --lr 0.01 --wd 1e-4 --out "$out/runs/hp_sgd_lr0.01_wd1e-4"
  t1 --arch standard --opt adam --lr 1e-3 --out "$out/runs/hp_adam_lr1e-3"
  for arch in standard light; do for act in relu leaky_relu tanh; do for loss in ce nll; do for opt in adam sgd; do
    t1 --arch $arch --act $act --loss $loss --opt $opt --out "$out/runs/grid_${arch}_${act}_${loss}_${opt}"
  done; done; done; done
  for model in vgg_a vgg_a_bn vgg_a_res_bn; do for opt in adam sgd; do
    t2 --model $model --opt $opt --out "$out/runs/t2_${model}_${opt}"
  done; done
} > "$out/logs/train.jobs"
run_phase train

# 2. loss functions beyond the report (best grid config by validation accuracy), BN analysis
best_flags=$($PY task2/reproduce.py best "$out" any --flags 2>/dev/null) || best_flags=""
{
  if [ -n "$best_flags" ]; then
    t1 $best_flags --loss mse --out "$out/runs/loss_mse"
    t1 $best_flags --loss ce --label-smoothing 0.1 --out "$out/runs/loss_ce_ls0.1"
  fi
  echo "task2/bn_analysis.py ${data[*]} ${common[*]} --epochs $bn_epochs ${bn_extra[*]} --out $out/bn_analysis"
} > "$out/logs/analysis.jobs"
run_phase analysis

# 3. landscapes with Hessian sharpness, the SGD-Adam interpolation, first-layer filters of the best model
best_any=$($PY task2/reproduce.py best "$out" any 2>/dev/null) || best_any=""
best_sgd=$($PY task2/reproduce.py best "$out" sgd 2>/dev/null) || best_sgd=""
best_adam=$($PY task2/reproduce.py best "$out" adam 2>/dev/null) || best_adam=""
{
  [ -n "$best_sgd" ] && surface --ckpt "$best_sgd/best.pt" --x $grid --y $grid --hessian --out "$out/landscapes/best_sgd"
  [ -n "$best_adam" ] && surface --ckpt "$best_adam/best.pt" --x $grid --y $grid --hessian --out "$out/landscapes/best_adam"
  [ -n "$best_sgd" ] && [ -f "${best_sgd%_sgd}_adam/best.pt" ] && surface --ckpt "$best_sgd/best.pt" \
    --interp "${best_sgd%_sgd}_adam/best.pt" --x $interp --out "$out/landscapes/interp_sgd_adam"
  for model in vgg_a vgg_a_bn; do
    [ -f "$out/runs/t2_${model}_adam/best.pt" ] && surface --ckpt "$out/runs/t2_${model}_adam/best.pt" \
      --x $grid --y $grid --hessian --out "$out/landscapes/$model"
  done
  [ -n "$best_any" ] && echo "task1/visualize.py ${data[*]} ${ls_device[*]} --ckpt $best_any/best.pt --n 16 --out $out/visualize"
} > "$out/logs/landscapes.jobs"
run_phase landscapes

# 4. tables and figures
$PY task2/reproduce.py report "$out" --profile "$profile" $update_readme || echo "report step" >> "$failures"
elapsed=$(( $(date +%s) - started ))
if [ -s "$failures" ]; then
  echo "== done in ${elapsed} s with $(wc -l < "$failures") failure(s):"; sed 's/^/  /' "$failures"
  exit 1
fi
echo "== done in ${elapsed} s, no failures: $out/tables.md, $out/figures/"
