#!/bin/sh
# Trains the "bag of tricks" strong baseline (Luo et al., CVPR-W 2019) on Market-1501 with the
# paper's settings, its epochs translated to iterations: ResNet-50 from ImageNet with last
# stride 1, BNNeck on the 2048-D pooled feature, batch-hard triplet loss with margin 0.3 +
# ID loss with label smoothing 0.1 + center loss 0.0005 (centres at lr 0.5), P=16 x K=4,
# 256x128 inputs flipped, padded by 10 and cropped, random erasing 0.5, Adam at 3.5e-4 with
# weight decay 5e-4, a 10-epoch warmup from 0.1x and x0.1 at epochs 40 and 70 of 120.
# One epoch is 186 iterations: the paper's sampler gives each identity floor(images / 4)
# groups of 4 (at least 1), 11,876 of Market's 12,936 images, in batches of 64.
#
# Usage: sh market1501_bot_train.sh IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT [more flags]
#   IMAGE_ROOT          the dataset folder, e.g. /data/Market-1501-v15.09.15
#   INITIAL_CHECKPOINT  Keras' ImageNet resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
#                       (or a .weights.h5 of keras.applications.ResNet50: both then use Keras'
#                       ResNet layout), slim's resnet_v1_50.ckpt, or "none"
#   EXPERIMENT_ROOT     where checkpoints and logs go
# Flags after these three are passed on to train.py and win over the ones below. Evaluate
# with --metric cosine (the paper's inference metric on BNNeck features).
# The training CSV is data/market1501_train.csv: write it with
#   python data/prepare.py market1501 IMAGE_ROOT --out data/
# or pass --train_set.
set -e
if [ $# -lt 3 ]; then
    echo "$0: error: expected IMAGE_ROOT INITIAL_CHECKPOINT EXPERIMENT_ROOT" >&2
    sed -n '11,21s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
IMAGE_ROOT=$1
INITIAL_CHECKPOINT=$2
EXPERIMENT_ROOT=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
TRAIN_SET=$HERE/data/market1501_train.csv
EPOCH=186

case " $* " in
    *" --train_set"*) ;;
    *) if [ ! -f "$TRAIN_SET" ]; then
           echo "$0: error: $TRAIN_SET does not exist; write it with:" \
                "python data/prepare.py market1501 $IMAGE_ROOT --out $HERE/data" >&2
           exit 2
       fi ;;
esac
case "$INITIAL_CHECKPOINT" in
    none) ;;
    *.h5) set -- --initial_checkpoint "$INITIAL_CHECKPOINT" --resnet_layout keras "$@" ;;
    *) set -- --initial_checkpoint "$INITIAL_CHECKPOINT" "$@" ;;
esac

exec "${PYTHON:-python}" "$HERE/train.py" \
    --train_set "$TRAIN_SET" \
    --image_root "$IMAGE_ROOT" \
    --experiment_root "$EXPERIMENT_ROOT" \
    --model_name resnet_v1_50 \
    --last_stride 1 \
    --head_name bnneck \
    --embedding_dim 2048 \
    --batch_p 16 \
    --batch_k 4 \
    --net_input_height 256 --net_input_width 128 \
    --flip_augment \
    --pad_crop 10 \
    --random_erasing 0.5 \
    --margin 0.3 \
    --metric euclidean \
    --loss batch_hard \
    --id_loss_weight 1 \
    --label_smoothing 0.1 \
    --center_loss_weight 0.0005 \
    --center_lr 0.5 \
    --learning_rate 3.5e-4 \
    --weight_decay 5e-4 \
    --warmup_iterations $((10 * EPOCH)) \
    --lr_schedule step \
    --lr_steps $((40 * EPOCH)),$((70 * EPOCH)) \
    --lr_gamma 0.1 \
    --train_iterations $((120 * EPOCH)) \
    --checkpoint_frequency 1000 \
    "$@"
