#!/usr/bin/env bash
# Lay out and/or verify COCO 2017 (+ unlabeled2017) under $DETECTRON2_DATASETS (default ./datasets).
#
#   datasets/prepare_coco.sh [ARCHIVE_DIR]    unzip archives found in ARCHIVE_DIR, then verify
#   datasets/prepare_coco.sh --verify         only verify the existing tree
#
# This script never downloads anything. Get the archives from the official site first:
#   http://images.cocodataset.org/zips/train2017.zip
#   http://images.cocodataset.org/zips/val2017.zip
#   http://images.cocodataset.org/zips/unlabeled2017.zip                (semi-supervised runs)
#   http://images.cocodataset.org/annotations/annotations_trainval2017.zip
#   http://images.cocodataset.org/annotations/image_info_unlabeled2017.zip
#
# Result (what detectron2's coco_2017_* names and d2kd's coco_2017_unlabeled read):
#   $DETECTRON2_DATASETS/coco/{train2017,val2017,unlabeled2017}/*.jpg
#   $DETECTRON2_DATASETS/coco/annotations/{instances_train2017,instances_val2017,
#                                          image_info_unlabeled2017}.json
set -euo pipefail

ROOT="${DETECTRON2_DATASETS:-datasets}"
ROOT="${ROOT/#\~/$HOME}"
COCO="$ROOT/coco"
ARCHIVES=""
VERIFY_ONLY=0
case "${1:-}" in
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  --verify) VERIFY_ONLY=1 ;;
  "") ;;
  *) ARCHIVES="$1" ;;
esac

echo "DETECTRON2_DATASETS root: $ROOT"
mkdir -p "$COCO"

if [[ $VERIFY_ONLY == 0 && -n "$ARCHIVES" ]]; then
  command -v unzip >/dev/null || { echo "unzip is needed to extract the archives"; exit 2; }
  found=0
  for z in train2017.zip val2017.zip unlabeled2017.zip annotations_trainval2017.zip \
           image_info_unlabeled2017.zip; do
    if [[ -f "$ARCHIVES/$z" ]]; then
      echo "extracting $ARCHIVES/$z -> $COCO"
      unzip -q -n "$ARCHIVES/$z" -d "$COCO"   # -n: never overwrite existing files
      found=1
    else
      echo "not found (skipped): $ARCHIVES/$z"
    fi
  done
  [[ $found == 1 ]] || echo "no COCO archive in $ARCHIVES; see the URLs at the top of $0"
fi

# ---- verification -------------------------------------------------------------------------
status=0
check_file() {  # path what
  if [[ -s "$1" ]]; then echo "ok       $1"; else echo "MISSING  $1 ($2)"; status=1; fi
}
check_images() {  # dir expected what
  if [[ ! -d "$1" ]]; then echo "MISSING  $1 ($3)"; status=1; return; fi
  local n
  n=$(find "$1" -maxdepth 1 -name '*.jpg' | wc -l | tr -d ' ')
  if [[ "$n" == "$2" ]]; then echo "ok       $1: $n images"
  else echo "WARNING  $1: $n images (the official set has $2)"; fi
}
check_file "$COCO/annotations/instances_train2017.json" "coco_2017_train"
check_file "$COCO/annotations/instances_val2017.json" "coco_2017_val"
check_file "$COCO/annotations/image_info_unlabeled2017.json" "coco_2017_unlabeled"
check_images "$COCO/train2017" 118287 "coco_2017_train"
check_images "$COCO/val2017" 5000 "coco_2017_val"
check_images "$COCO/unlabeled2017" 123403 "coco_2017_unlabeled"

if [[ $status == 0 ]]; then
  echo "COCO is ready: coco_2017_train, coco_2017_val, coco_2017_unlabeled"
else
  echo "COCO is NOT complete under $ROOT (see above; datasets/README.md)"
fi
exit $status
