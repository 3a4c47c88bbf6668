#!/usr/bin/env bash
# The shipped models' default heatmaps and the heatmap figures of models/README.md
# ("Heatmaps: which layer points at the finding"), without retraining: the same phantoms each
# model was trained and tested on (train_on_gpu.sh's / train_shipped_models.sh's plan:
# condition, layout, count, seed, 224 px), then per model
#   1. explain-eval --split valid --write-registry: every CAM method x layer setting on all
#      abnormal validation images; the best pointing game within 15 px (ties: the cheaper)
#      becomes the registry entry's `heatmap`, with its contour level;
#   2. explain-eval --split test --write-registry: the test table (every method of the table
#      and every setting; pointing and energy on up to 200 abnormal test images, deletion /
#      insertion on the first 40, LIME on 40), saved as models/<id>.explain.json, and the
#      default's test figures added to its `heatmap` field.
# explain-eval checks the regenerated split sizes against each entry's training record and
# writes nothing to the registry from data that does not match. About 15 minutes a model on
# 2 CPU cores.
#
#   bash models/heatmap_figures.sh [MODEL_ID ...]     (default: the six shipped models)
set -euo pipefail
cd "$(dirname "$0")/.."

work=${WORK:-$(mktemp -d)}
export XRAY_AI_AUDIT_DB="$work/audit.sqlite3"  # the registry's own audit log is runtime state

# id                                      condition        layout   count  seed
plan="
fracture-efficientnetlite0-fast           fracture         folders  3000   102
msk_abnormality-efficientnetlite0-fast    msk_abnormality  mura     3000   113
pneumonia-mobilenetv2-fast                pneumonia        folders  6000   111
arthritis-mobilenetv2-fast                arthritis        folders  6000   114
osteoporosis-mobilenetv2-fast             osteoporosis     folders  6000   115
cardiomegaly-mobilenetv2-fast             cardiomegaly     folders  6000   116
"
wanted=" ${*:-$(echo "$plan" | awk 'NF {print $1}' | tr '\n' ' ')} "
echo "$plan" | while read -r id condition layout count seed; do
    [[ -z "$id" || "$wanted" != *" $id "* ]] && continue
    data="$work/$condition-$seed"
    [[ -f "$data/phantoms.json" ]] || python -m xray_ai phantoms --condition "$condition" --count "$count" \
        --layout "$layout" --size 224 --seed "$seed" --out "$data"
    python -m xray_ai explain-eval --model "$id" --data "$data" --layout "$layout" --split valid --max-images 0 \
        --write-registry
    python -m xray_ai explain-eval --model "$id" --data "$data" --layout "$layout" --split test --max-images 200 \
        --faithfulness-images 40 --lime-images 40 --write-registry
done
