#!/usr/bin/env bash
# The architecture and optimizer ablation of the modern-architecture issue, on the daemon itself:
# `crystalline run` on its defaults (the baseline), then each change alone, Muon alone, and a
# learning-rate sweep for each optimizer, N daemon minutes each, one run at a time. Each finished
# run appends to bench/results/daemon_learning.jsonl; running this again carries on with the
# runs still missing (bench/daemon_learning.py). The machine should otherwise be quiet.
#
#   bench/arch_ablation.sh [MINUTES] [RUN ...]    (default: 5, every screening run below)
#   bench/arch_ablation.sh 10 default+rope default+muon   # confirm the leaders at 10 minutes
#   python bench/daemon_learning.py --summary            # the table
#   ALLOW_DIRTY=1 bench/arch_ablation.sh ...              # record from a tree with uncommitted changes
#                                                         # (rows marked dirty; refused otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
shift || true
recipes="rope=model.positions=rope,rms=model.norm=rmsnorm,qk=model.qk_norm=true"
recipes+=",relu2=model.activation=relu2,zero=model.zero_init_proj=true,cap=model.logit_softcap=30"
recipes+=",untied=model.tie_head=false,muon=train.optimizer=muon"
recipes+=",lr2=train.learning_rate=0.002,lr5=train.learning_rate=0.005"
recipes+=",mlr1=train.muon_lr=0.01,mlr4=train.muon_lr=0.04"
recipes+=",e30=daemon.eval_every_seconds=30"
if [ "$#" -eq 0 ]; then
  set -- default default+rope default+rms default+qk default+relu2 default+zero default+cap default+untied \
         default+muon default+lr2 default+lr5 default+muon+mlr1 default+muon+mlr4
fi
runs=""
for r in "$@"; do runs+="${runs:+,}daemon:$r:$minutes"; done
exec "${PYTHON:-.venv/bin/python}" bench/daemon_learning.py --runs "$runs" --recipes "$recipes" --at "$minutes" \
  ${ALLOW_DIRTY:+--allow-dirty}
