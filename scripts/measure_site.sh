#!/usr/bin/env bash
# Every figure of issue 22's goal table for one differential bundle, on the real data; writes only
# under OUT. Usage: PATH=.venv/bin:$PATH bash scripts/measure_site.sh models/differential-int8 /tmp/site
#
#   in distribution    edge eval on pbc-8class/val + blood-5class/val (rejection counted)
#   uncalibrated       edge eval on tecom-wbc, edge eval --frames on bccd-frames (gate applied; false
#                      blasts with and without the gate's flag), and where the gate decided
#   device calibration tecom-wbc: 20 a class (at most half of a class) to edge adapt, the rest scored;
#                      bccd-frames: the same split of the labelled frames (adapt --frames, eval --frames)
#   gate               scripts/gate_batches.py: 100 random batches of 50 held-out training-lab cells
set -euo pipefail
BUNDLE=${1:?bundle}
OUT=${2:?output folder}
D=${EDGE_DATA_DIR:-../shared/data}
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }

run edge eval "$BUNDLE" "$D/pbc-8class/val" "$D/blood-5class/val" --map seg_neutrophil=neutrophil \
    --baseline-images 0 --json "$OUT/in-distribution.json" | tail -6
run edge eval "$BUNDLE" "$D/tecom-wbc" --baseline-images 0 --json "$OUT/tecom.json" | tail -4
run edge eval "$BUNDLE" --frames "$D/bccd-frames/JPEGImages" --labels "$D/bccd-frames/wbc-labels.csv" \
    --json "$OUT/bccd.json" | tail -4

rm -rf "$OUT/tecom-site" "$OUT/tecom-rest"
run python scripts/split_site.py "$D/tecom-wbc" --per-class 20 --at-most-half --site "$OUT/tecom-site" --rest "$OUT/tecom-rest"
run edge adapt "$BUNDLE" "$OUT/tecom-site" --out "$OUT/tecom-bundle" --site-name tecom | tail -6
run edge eval "$OUT/tecom-bundle" "$OUT/tecom-rest" --baseline-images 0 --json "$OUT/tecom-calibrated.json" | tail -4

run python scripts/split_site.py "$D/bccd-frames/wbc-labels.csv" --labels --per-class 20 --at-most-half \
    --site "$OUT/bccd-site.csv" --rest "$OUT/bccd-rest.csv"
run edge adapt "$BUNDLE" --frames "$D/bccd-frames/JPEGImages" --labels "$OUT/bccd-site.csv" \
    --out "$OUT/bccd-bundle" --site-name bccd | tail -6
run edge eval "$OUT/bccd-bundle" --frames "$D/bccd-frames/JPEGImages" --labels "$OUT/bccd-rest.csv" \
    --json "$OUT/bccd-calibrated.json" | tail -4

run python scripts/gate_batches.py "$BUNDLE" --json "$OUT/gate.json"
