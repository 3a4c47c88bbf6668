#!/usr/bin/env bash
# The intensive tier on CPU (issue 20), where no GPU is lent: the same phantoms as the fast
# model of the condition (same generator, seed and count, so the same split and labels) but
# rendered at 320 px, and a model that reads them at 320 px; the intensive protocol (head
# first, then the top 30% of the backbone, then all of it; batch 16; early stopping on the
# validation AUC), registered beside the fast model, not activated. Then:
#   1. its heatmap test table (as heatmap_figures.sh; `train` has already chosen its default
#      heatmap on the validation split and measured it on test); EXPLAIN=0 skips it (about
#      20 min a model on 2 cores; the tiers' comparison does not need it);
#   2. its ONNX export, checked against TensorFlow and pinned (served without TensorFlow);
#   3. both tiers scored on the same 320 px validation and test images
#      (models/compare_tiers.py -> models/<intensive id>.tiers.json), and the one better on
#      validation made active (the fast one unless the intensive one is better beyond noise).
# A condition whose intensive model file exists already is not trained again (steps 1-3 run).
#
#   [EXPLAIN=0] bash models/train_intensive_cpu.sh [CONDITION ...]     (default: fracture)
#
# Deviations from the protocol, for the CPU budget (2 cores, one session for all six): the
# epochs below (10 for fracture, 3000 images; 3-4 for the others, 6000 images) instead of up
# to 50, and Adam 1e-4 instead of 1e-5 (at 1e-5 a few epochs leave a new head barely fitted).
# Musculoskeletal abnormality starts from its fast model's weights ("start fast"; the same
# EfficientNet-Lite0, fitted at 224 px on the same split, rebuilt for 320 px) instead of
# from ImageNet's: from ImageNet, 3 CPU epochs reached validation AUC 0.63 (its fast model
# had 40 GPU epochs), a model to offer no one.
# Each run's record (epochs, wall time, device) is in its metrics.json `training`;
# models/README.md, "The intensive tier", has them side by side. The 2026-12-02 runs used
# EXPLAIN=1 for fracture and EXPLAIN=0 for the others; musculoskeletal abnormality's
# explain-eval (step 1's command) ran after its comparison, once it had become active.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${WORK:-$(mktemp -d)}
export XRAY_AI_AUDIT_DB="$work/audit.sqlite3"  # the registry's own audit log is runtime state

# condition  layout   count  seed  arch               epochs  start     fast model
plan="
fracture     folders  3000   102   efficientnetlite0  10      imagenet  fracture-efficientnetlite0-fast
pneumonia    folders  6000   111   efficientnetlite0  4       imagenet  pneumonia-mobilenetv2-fast
msk_abnormality mura 3000   113   efficientnetlite0  10      fast      msk_abnormality-efficientnetlite0-fast
osteoporosis folders  6000   115   efficientnetlite0  3       imagenet  osteoporosis-mobilenetv2-fast
arthritis    folders  6000   114   efficientnetlite0  3       imagenet  arthritis-mobilenetv2-fast
cardiomegaly folders  6000   116   efficientnetlite0  3       imagenet  cardiomegaly-mobilenetv2-fast
"

wanted=" ${*:-fracture} "
echo "$plan" | while read -r condition layout count seed arch epochs start fast; do
    [[ -z "$condition" || "$wanted" != *" $condition "* ]] && continue
    data="$work/$condition-320"
    id="$condition-$arch-intensive"
    from=()  # start "fast": fitted further from the fast model (same backbone, same split)
    [[ "$start" == fast ]] && from=(--initial-model "models/$fast.keras")
    parts=()  # the upper extremity's seven body parts: a body-part head, as the fast model has
    [[ "$layout" == mura ]] && parts=(--body-part-weight 1)
    [[ -f "$data/phantoms.json" ]] || python -m xray_ai phantoms --condition "$condition" --count "$count" \
        --layout "$layout" --size 320 --seed "$seed" --out "$data"
    [[ -f "models/$id.keras" ]] || python -m xray_ai train --protocol intensive --condition "$condition" \
        --arch "$arch" --data "$data" --layout "$layout" --image-size 320 --epochs "$epochs" --learning-rate 1e-4 \
        --weights imagenet "${from[@]}" "${parts[@]}" --seed "$seed" --model-id "$id" --out models --register
    [[ "${EXPLAIN:-1}" == 0 ]] || python -m xray_ai explain-eval --model "$id" --data "$data" --layout "$layout" \
        --split test --max-images 200 --faithfulness-images 40 --lime-images 40 --write-registry
    python -m xray_ai export-onnx "$id" --ship
    python models/compare_tiers.py --data "$data" --layout "$layout" --intensive "$id" --fast "$fast" \
        --out "models/$id.tiers.json" --activate
done
