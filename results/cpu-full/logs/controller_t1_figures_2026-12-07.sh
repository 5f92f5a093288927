#!/bin/bash
# Started 2026-12-07 23:10: the first list's Adam run ends at about 23:35 and the list would then spend ~35 min on its
# surfaces, leaving the headline's seed 1 (~62 min) and the SGD<->Adam path unfinished when the sitting ends (01:08).
# So: once the runner has begun the Adam surface ([3/9]), stop it (SIGTERM: the surface saves its points and the
# runner exits 130), then run the second list: seed 1, the path (it needs both best.pt), the filters, then the
# surfaces and filter Hessians (the Adam surface resumes).
R=/work/main/results/cpu-full/logs
RUNNER=$1
until grep -q '^\[3/9\]' $R/t1_figures_2026-12-07.log; do sleep 10; done
sleep 15
echo "$(date -u +%FT%T) SIGTERM $RUNNER (begun [3/9])" >> $R/controller_t1_figures_2026-12-07.log
kill -TERM "$RUNNER"
while kill -0 "$RUNNER" 2>/dev/null; do sleep 2; done
echo "$(date -u +%FT%T) runner gone; starting the second list" >> $R/controller_t1_figures_2026-12-07.log
cd /work/long && exec .venv/bin/python task2/reproduce.py jobs $R/t1_figures_2026-12-07b.jobs > $R/t1_figures_2026-12-07b.log 2>&1
