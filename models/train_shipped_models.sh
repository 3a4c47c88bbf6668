#!/usr/bin/env bash
# Rebuild the shipped demonstration models: phantoms -> quick protocol -> evaluate on the
# held-out phantom test split -> register and activate. CPU only; about 30 minutes on 2 cores.
#
#   bash models/train_shipped_models.sh [CONDITION ...]     (default: the four that ship)
#
# Each model is CompactCNN ("fast" profile) from random weights with lesion-mask
# supervision; why not MobileNetV2 is in models/README.md. Seeds are fixed, so a rerun
# on the same software gives the same data; weights may differ in the last bits between
# machines, and so would their sha256.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export XRAY_AI_AUDIT_DB="$work/audit.sqlite3"  # the registry's own audit log is runtime state

# condition      layout   count  size  seed   (count: images, or studies for the MURA layout)
# fracture and msk_abnormality are in the plan but not in the default list: at 112 px and
# 12 epochs they stayed at chance (fracture validation AUC 0.48-0.53, a hairline is a pixel
# wide there; msk_abnormality test AUC 0.54), so neither ships and their registry slots
# serve the marked placeholder. They need a larger input (224 px: ~4x the time) or
# ImageNet weights.
plan="
pneumonia        folders  3000   96    101
fracture         folders  3000   112   102
msk_abnormality  mura     1100   112   103
arthritis        folders  3000   96    104
osteoporosis     folders  3000   96    105
cardiomegaly     folders  3000   96    106
"

wanted=" ${*:-pneumonia arthritis osteoporosis cardiomegaly} "
echo "$plan" | while read -r condition layout count size seed; do
    [[ -z "$condition" || "$wanted" != *" $condition "* ]] && continue
    data="$work/$condition"
    # Written at 224 px, so the pipeline downsamples them as inference downsamples uploads.
    python -m xray_ai phantoms --condition "$condition" --count "$count" --layout "$layout" \
        --size 224 --seed "$seed" --out "$data"
    python -m xray_ai train --protocol quick --condition "$condition" --arch compactcnn \
        --data "$data" --layout "$layout" --image-size "$size" --epochs 12 --patience 6 \
        --seed "$seed" --model-id "$condition-compactcnn-fast" --out models --register --activate
    rm -rf "$data"
done
