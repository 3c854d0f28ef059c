#!/usr/bin/env bash
# The whole pipeline on a synthetic dataset, on the CPU, in a few minutes: draw the dataset,
# train a small CNN with the batch-hard triplet loss, embed query and gallery with the
# untrained (checkpoint-0) and the trained weights, and evaluate both.
# Extra arguments go to train.py, e.g. `bash demo.sh --train_iterations 1000`.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DEMO_DATA:-data/demo}
EXP=${DEMO_EXPERIMENT:-experiments/demo}

python data/make_demo.py --out "$DATA"
rm -rf "$EXP"  # the demo's own experiment root: each run starts afresh
python train.py --train_set "$DATA/demo_train.csv" --image_root "$DATA" --experiment_root "$EXP" \
    --model_name small_cnn --head_name fc1024 --embedding_dim 128 \
    --batch_p 18 --batch_k 4 --net_input_height 128 --net_input_width 64 --flip_augment \
    --learning_rate 1e-3 --train_iterations 300 --decay_start_iteration 200 \
    --checkpoint_frequency 0 "$@"

for weights in untrained trained; do
    checkpoint=()
    [ "$weights" = untrained ] && checkpoint=(--checkpoint checkpoint-0)
    for split in query test; do
        python embed.py --experiment_root "$EXP" --dataset "$DATA/demo_$split.csv" \
            --filename "${weights}_$split.h5" "${checkpoint[@]}" --quiet
    done
    echo "== $weights network:"
    python evaluate.py --excluder market1501 \
        --query_dataset "$DATA/demo_query.csv" --query_embeddings "$EXP/${weights}_query.h5" \
        --gallery_dataset "$DATA/demo_test.csv" --gallery_embeddings "$EXP/${weights}_test.h5" \
        --filename "$EXP/${weights}_evaluation.json"
done
