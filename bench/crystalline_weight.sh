#!/usr/bin/env bash
# Held-out bits per byte for crystalline_weight 0, 0.01 and 0.1 on the shared Shakespeare corpus:
# size S of engine.sizes (d=128, L=4, H=4; T=128, B=16), 2 threads, lr 1e-3, 100 warmup steps, cosine,
# STEPS steps on train/, then bits per byte on val/ (every target once, windows of 128).
# usage: bench/crystalline_weight.sh [STEPS] [CORPUS]   (needs the shared corpus; not a test)
set -euo pipefail
steps="${1:-1000}"
corpus="${2:-../shared/corpus/shakespeare}"
bin="${CRYSTALLINE:-crystalline}"
out="$(mktemp -d)"
[ -d "$corpus/train" ] || { echo "corpus not found: $corpus" >&2; exit 2; }
printf 'weight\tsteps\tval_bits_per_byte\ttrain_seconds\n'
for w in 0 0.01 0.1; do
  start=$(date +%s.%N)
  "$bin" train "$corpus/train" --steps "$steps" --threads 2 --d-model 128 --layers 4 --heads 4 \
    --context 128 --batch-size 16 --lr 1e-3 --warmup 100 --crystalline-weight "$w" \
    --log-every 1000000 --state-dir "$out/w$w" 2>/dev/null
  end=$(date +%s.%N)
  bpb=$("$bin" eval "$corpus/val" --json --state-dir "$out/w$w" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["bits_per_byte"], 4))')
  printf '%s\t%s\t%s\t%.0f\n' "$w" "$steps" "$bpb" "$(echo "$end - $start" | bc)"
done
rm -rf "$out"
