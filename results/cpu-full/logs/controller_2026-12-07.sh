#!/bin/bash
# after the lr0.05_bs128 try: the runner refuses the VGG-A Adam s2 jobs (held), then the BN SGD retrain chain starts
log=/work/main/results/cpu-full/logs/controller_2026-12-07.log
echo "$(date -u '+%F %T') waiting for runner 2285 (the lr0.05_bs128 try)" >> $log
while kill -0 2285 2>/dev/null; do sleep 10; done
echo "$(date -u '+%F %T') runner ended; removing the hold on runs/t2_vgg_a_adam_s2" >> $log
rm -r /work/main/results/cpu-full/runs/t2_vgg_a_adam_s2
cd /work/long
echo "$(date -u '+%F %T') starting logs/t2_bn_sgd_retrain_chain.jobs" >> $log
.venv/bin/python task2/reproduce.py jobs /work/main/results/cpu-full/logs/t2_bn_sgd_retrain_chain.jobs > /work/main/results/cpu-full/logs/t2_bn_sgd_retrain_chain.log 2>&1
echo "$(date -u '+%F %T') chain ended with exit $?" >> $log
