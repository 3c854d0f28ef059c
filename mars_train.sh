#!/bin/sh
# Trains TriNet on MARS with the paper's settings: exactly those of market1501_train.sh (read
# it for the list), on the training CSV data/mars_train.csv, every frame an image of its
# identity. The authors used "the exact same setup for both MARS and Market-1501", so the K
# images of an identity are any of its frames; --frames_per_tracklet 1 draws them from K
# different tracklets instead (where the identity has that many).
#
# Usage: sh mars_train.sh IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT [more train.py flags]
#   IMAGE_ROOT          the dataset folder, holding bbox_train/ (e.g. /data/MARS)
#   INITIAL_CHECKPOINT  slim's ImageNet resnet_v1_50.ckpt, or "none" for a random start
#   EXPERIMENT_ROOT     where checkpoints and logs go
# Write the training CSV with `python data/prepare.py mars IMAGE_ROOT --out data/`, or pass
# --train_set. Flags after the three arguments win over the script's.
set -e
if [ $# -lt 3 ]; then
    echo "$0: error: expected IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT" >&2
    sed -n '8,13s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE_ROOT=$1
INITIAL_CHECKPOINT=$2
EXPERIMENT_ROOT=$3
shift 3
exec sh "$HERE/market1501_train.sh" "$IMAGE_ROOT" "$INITIAL_CHECKPOINT" "$EXPERIMENT_ROOT" \
    --train_set "$HERE/data/mars_train.csv" "$@"
