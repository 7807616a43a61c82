#!/usr/bin/env bash
# Train a face classifier from a scrape laid out as <scrape>/<person>/*, end to end.
# Usage: scripts/train_from_scrape.sh <scrape> <run-folder> [weights]
#   weights: "imagenet" (default; downloads through Keras) or the path of a MobileNetV2
#   no-top weights file (.h5 or .weights.h5) for machines without internet.
# Extra facecls run options can follow, e.g. --alpha 1.0 --seed 3.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 <scrape> <run-folder> [weights] [facecls run options...]" >&2
  exit 2
fi
scrape=$1
run=$2
weights=${3:-imagenet}
shift $(( $# < 3 ? $# : 3 ))
exec facecls run "$scrape" --out "$run" --weights "$weights" "$@"
