#!/usr/bin/env bash
# Every figure of a differential bundle's model card (issue 13), on the real data; nothing is written
# into the project (the crops and the adapted bundles stay under OUT).
#
#   bash scripts/measure_differential.sh [BUNDLE] [OUT]      # default models/differential-int8 /tmp/measure
#
# Reads ../shared/data (or $EDGE_DATA_DIR). Takes 10-20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-models/differential-int8}
OUT=${2:-/tmp/measure}
D=${EDGE_DATA_DIR:-../shared/data}
E=${EDGE:-edge}
PY=${PYTHON:-python}
mkdir -p "$OUT"
step() { echo "== $*" >&2; }
step "sources it was trained on"
$E eval "$B" "$D/pbc-8class/val" "$D/blood-5class/val" --map seg_neutrophil=neutrophil --json "$OUT/val.json" --plot "$OUT/val.png" > "$OUT/val.txt"
step "a microscope it never saw (tecom-wbc)"
$E eval "$B" "$D/tecom-wbc" --json "$OUT/tecom.json" > "$OUT/tecom.txt"
step "site calibration: 20 cells a class, scored on the rest"
rm -rf "$OUT/tecom-site" "$OUT/tecom-rest" "$OUT/adapted"
$PY scripts/split_site.py "$D/tecom-wbc" --per-class 20 --site "$OUT/tecom-site" --rest "$OUT/tecom-rest" > "$OUT/split.txt"
$E adapt "$B" "$OUT/tecom-site" --out "$OUT/adapted" > "$OUT/adapt.txt"
$E eval "$OUT/adapted" "$OUT/tecom-rest" --json "$OUT/tecom-adapted.json" > "$OUT/tecom-adapted.txt"
step "debris and white cells cut from BCCD fields"
rm -rf "$OUT/bccd-sets"
$PY scripts/make_bccd_sets.py "$D/bccd-frames" --out "$OUT/bccd-sets" > "$OUT/bccd-sets.txt"
$E eval "$B" "$OUT/bccd-sets/debris" --json "$OUT/debris.json" > "$OUT/debris.txt"
$E eval "$B" "$OUT/bccd-sets/wbc" --json "$OUT/bccd-wbc.json" > "$OUT/bccd-wbc.txt"
step "does it read the lab?"
$PY scripts/measure_confound.py "$B" --lab "barcelona=$D/pbc-8class/val/neutrophil" \
  --lab "munich=$D/blood-5class/val/seg_neutrophil" --json "$OUT/confound.json" > "$OUT/confound.txt"
step "the daemon on normal blood, cell and field mode"
for mode in cell field; do
  rm -f "$OUT/$mode.db"*
  $E run --bundle "$B" --mode $mode --source "replay:$D/bccd-frames/JPEGImages" --db "$OUT/$mode.db" \
    --http off --summary-json "$OUT/$mode.json" > "$OUT/$mode.txt" 2>&1
done
tail -n 3 "$OUT/val.txt" "$OUT/tecom.txt" "$OUT/tecom-adapted.txt" "$OUT/debris.txt" "$OUT/bccd-wbc.txt" "$OUT/confound.txt"
