#!/bin/sh
# Trains TriNet on DukeMTMC-reID with the settings of the paper (Hermans, Beyer, Leibe 2017):
# ResNet-50 from ImageNet + fc1024 head, 128-D embedding, batch-hard soft-margin triplet loss,
# P=18 identities x K=4 images, 256x128 inputs randomly cropped from 288x144 and flipped,
# Adam at 3e-4 for 25000 iterations with exponential decay from iteration 15000.
#
# Usage: sh duke_mtmc_train.sh IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT [more train.py flags]
#   IMAGE_ROOT          the dataset folder, e.g. /data/DukeMTMC-reID
#   INITIAL_CHECKPOINT  slim's ImageNet resnet_v1_50.ckpt, or "none" for a random start
#   EXPERIMENT_ROOT     where checkpoints and logs go
# Flags after these three are passed on to train.py and win over the ones below (argparse
# keeps the last value), e.g. --train_iterations 30000 or --batch_p 8 for a smaller GPU.
# The training CSV is data/duke_train.csv: write it with
#   python data/prepare.py duke IMAGE_ROOT --out data/
# or pass --train_set.
set -e
if [ $# -lt 3 ]; then
    echo "$0: error: expected IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT" >&2
    sed -n '7,15s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
IMAGE_ROOT=$1
INITIAL_CHECKPOINT=$2
EXPERIMENT_ROOT=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
TRAIN_SET=$HERE/data/duke_train.csv

case " $* " in
    *" --train_set"*) ;;
    *) if [ ! -f "$TRAIN_SET" ]; then
           echo "$0: error: $TRAIN_SET does not exist; write it with:" \
                "python data/prepare.py duke $IMAGE_ROOT --out $HERE/data" >&2
           exit 2
       fi ;;
esac
if [ "$INITIAL_CHECKPOINT" != none ]; then
    set -- --initial_checkpoint "$INITIAL_CHECKPOINT" "$@"
fi

exec "${PYTHON:-python}" "$HERE/train.py" \
    --train_set "$TRAIN_SET" \
    --image_root "$IMAGE_ROOT" \
    --experiment_root "$EXPERIMENT_ROOT" \
    --model_name resnet_v1_50 \
    --head_name fc1024 \
    --embedding_dim 128 \
    --batch_p 18 \
    --batch_k 4 \
    --pre_crop_height 288 --pre_crop_width 144 \
    --net_input_height 256 --net_input_width 128 \
    --flip_augment \
    --crop_augment \
    --margin soft \
    --metric euclidean \
    --loss batch_hard \
    --learning_rate 3e-4 \
    --train_iterations 25000 \
    --decay_start_iteration 15000 \
    --checkpoint_frequency 1000 \
    "$@"
