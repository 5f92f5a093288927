#!/bin/bash
# Started 2026-12-08 01:45: when the Task 1 surfaces list (t1_figures_2026-12-07b, resumed in
# logs/t1_figures_2026-12-08.log) ends, run (one long job at a time) the cpu profile's filter-coordinate spectra
# (results/cpu/logs/filter_spectra_2026-12-08.sh, ~20 min, from a worktree at 8950fd2) and then the headline's
# seed 2 (~63 min, from the worktree at b607040). The Adam pair's seed 2 (~100 min with its Hessians) would not
# end before the sitting does, and its Hessians must be made in the sitting that trains it: next sitting.
R=/work/main/results
RUNNER=$1
while kill -0 "$RUNNER" 2>/dev/null; do sleep 10; done
echo "$(date -u +%FT%T) surfaces list ended; the cpu filter spectra" >> $R/cpu-full/logs/controller_2026-12-08.log
(cd /work/long2 && bash $R/cpu/logs/filter_spectra_2026-12-08.sh $R/cpu /work/scratch_cpu /work/main/data \
  > $R/cpu/logs/filter_spectra_2026-12-08.log 2>&1)
echo "$(date -u +%FT%T) spectra exited $?; the headline's seed 2" >> $R/cpu-full/logs/controller_2026-12-08.log
cd /work/long && exec .venv/bin/python task2/reproduce.py jobs $R/cpu-full/logs/t1_headline_s2_2026-12-08.jobs \
  > $R/cpu-full/logs/t1_headline_s2_2026-12-08.log 2>&1
