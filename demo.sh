#!/usr/bin/env bash
# The whole pipeline on a synthetic dataset, on the CPU, in one to three minutes: draw the
# dataset, train a small CNN with the batch-hard triplet loss, embed query and gallery with the
# untrained (checkpoint-0) and the trained weights, evaluate both, and print each stage's time.
# Extra arguments go to train.py, e.g. `bash demo.sh --train_iterations 1000`.
#
# Sized for time: 64x32 inputs (a quarter of the pixels of Market-1501's 128x64 images) and 200
# iterations train to about 55-60% mAP (untrained: about 1%).
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DEMO_DATA:-data/demo}
EXP=${DEMO_EXPERIMENT:-experiments/demo}
times=()

stage() {  # stage NAME COMMAND...: runs the command and records its wall time
    local name=$1 start=${EPOCHREALTIME/[.,]/}
    shift
    "$@"
    local micros=$(( ${EPOCHREALTIME/[.,]/} - start ))
    times+=("$(printf '%-28s %4d.%d s' "$name" $((micros / 1000000)) $((micros / 100000 % 10)))")
}

stage 'make the dataset' python data/make_demo.py --out "$DATA"
rm -rf "$EXP"  # the demo's own experiment root: each run starts afresh
stage 'train (200 iterations)' python train.py --train_set "$DATA/demo_train.csv" \
    --image_root "$DATA" --experiment_root "$EXP" \
    --model_name small_cnn --head_name fc1024 --embedding_dim 128 \
    --batch_p 18 --batch_k 4 --net_input_height 64 --net_input_width 32 --flip_augment \
    --learning_rate 2e-3 --train_iterations 200 --decay_start_iteration 130 \
    --checkpoint_frequency 0 --seed 1 "$@"

for weights in untrained trained; do
    checkpoint=()
    [ "$weights" = untrained ] && checkpoint=(--checkpoint checkpoint-0)
    for split in query test; do
        stage "embed $split ($weights)" python embed.py --experiment_root "$EXP" \
            --dataset "$DATA/demo_$split.csv" --filename "${weights}_$split.h5" \
            "${checkpoint[@]}" --quiet
    done
    echo "== $weights network:"
    stage "evaluate ($weights)" python evaluate.py --excluder market1501 \
        --query_dataset "$DATA/demo_query.csv" --query_embeddings "$EXP/${weights}_query.h5" \
        --gallery_dataset "$DATA/demo_test.csv" --gallery_embeddings "$EXP/${weights}_test.h5" \
        --filename "$EXP/${weights}_evaluation.json"
done

echo "== wall time per stage:"
printf '%s\n' "${times[@]}"
