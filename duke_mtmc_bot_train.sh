#!/bin/sh
# Trains the strong baseline on DukeMTMC-reID with the paper's settings: those of
# market1501_bot_train.sh (read it for the list), on data/duke_train.csv, with Duke's epoch
# of 241 iterations (15,424 of its 16,522 images in the paper's sampler, batches of 64):
# warmup 2410 iterations, x0.1 at 9640 and 16870, 28920 in all.
#
# Usage: sh duke_mtmc_bot_train.sh IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT [more flags]
#   IMAGE_ROOT          the dataset folder, e.g. /data/DukeMTMC-reID
#   INITIAL_CHECKPOINT  as for market1501_bot_train.sh, or "none"
#   EXPERIMENT_ROOT     where checkpoints and logs go
# Write the training CSV with `python data/prepare.py duke IMAGE_ROOT --out data/`, or pass
# --train_set. Flags after the three arguments win over the script's.
set -e
if [ $# -lt 3 ]; then
    echo "$0: error: expected IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT" >&2
    sed -n '7,12s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE_ROOT=$1
INITIAL_CHECKPOINT=$2
EXPERIMENT_ROOT=$3
shift 3
EPOCH=241
exec sh "$HERE/market1501_bot_train.sh" "$IMAGE_ROOT" "$INITIAL_CHECKPOINT" "$EXPERIMENT_ROOT" \
    --train_set "$HERE/data/duke_train.csv" \
    --warmup_iterations $((10 * EPOCH)) \
    --lr_steps $((40 * EPOCH)),$((70 * EPOCH)) \
    --train_iterations $((120 * EPOCH)) \
    "$@"
