#!/usr/bin/env bash
# Lay out and/or verify Pascal VOC 2007 + 2012 under $DETECTRON2_DATASETS (default ./datasets).
#
#   datasets/prepare_voc.sh [ARCHIVE_DIR]     extract archives found in ARCHIVE_DIR, then verify
#   datasets/prepare_voc.sh --verify          only verify the existing tree
#
# This script never downloads anything. Get the archives from the official site first:
#   http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar
#   http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar
#   http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
#
# Result (what detectron2's voc_* names and d2kd's voc_2007_2012_trainval read):
#   $DETECTRON2_DATASETS/VOC2007/{Annotations,ImageSets/Main,JPEGImages}
#   $DETECTRON2_DATASETS/VOC2012/{Annotations,ImageSets/Main,JPEGImages}
# The archives unpack into VOCdevkit/VOC20xx; VOC2007 and VOC2012 are made relative symlinks
# to those folders (an existing VOC20xx folder or link is left as it is).
set -euo pipefail

ROOT="${DETECTRON2_DATASETS:-datasets}"
ROOT="${ROOT/#\~/$HOME}"
ARCHIVES=""
VERIFY_ONLY=0
case "${1:-}" in
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  --verify) VERIFY_ONLY=1 ;;
  "") ;;
  *) ARCHIVES="$1" ;;
esac

echo "DETECTRON2_DATASETS root: $ROOT"
mkdir -p "$ROOT"

if [[ $VERIFY_ONLY == 0 && -n "$ARCHIVES" ]]; then
  found=0
  for tarball in VOCtrainval_06-Nov-2007.tar VOCtest_06-Nov-2007.tar VOCtrainval_11-May-2012.tar; do
    if [[ -f "$ARCHIVES/$tarball" ]]; then
      echo "extracting $ARCHIVES/$tarball -> $ROOT/VOCdevkit"
      tar -xf "$ARCHIVES/$tarball" -C "$ROOT"
      found=1
    else
      echo "not found (skipped): $ARCHIVES/$tarball"
    fi
  done
  [[ $found == 1 ]] || echo "no VOC archive in $ARCHIVES; see the URLs at the top of $0"
fi

for year in 2007 2012; do
  if [[ ! -e "$ROOT/VOC$year" && -d "$ROOT/VOCdevkit/VOC$year" ]]; then
    ln -s "VOCdevkit/VOC$year" "$ROOT/VOC$year"
    echo "linked $ROOT/VOC$year -> VOCdevkit/VOC$year"
  fi
done

# ---- verification -------------------------------------------------------------------------
status=0
check_split() {  # year split expected_count
  local dir="$ROOT/VOC$1" list="$ROOT/VOC$1/ImageSets/Main/$2.txt"
  if [[ ! -f "$list" ]]; then
    echo "MISSING  $list"; status=1; return
  fi
  local n missing=0 id
  n=$(grep -c . "$list" || true)
  while read -r id; do
    [[ -z "$id" ]] && continue
    if [[ ! -f "$dir/JPEGImages/$id.jpg" || ! -f "$dir/Annotations/$id.xml" ]]; then
      missing=$((missing + 1))
    fi
  done < "$list"
  if [[ $missing -gt 0 ]]; then
    echo "BROKEN   $list: $missing of $n ids lack JPEGImages/<id>.jpg or Annotations/<id>.xml"
    status=1
  elif [[ "$n" != "$3" ]]; then
    echo "WARNING  $list: $n ids (the official split has $3)"
  else
    echo "ok       $list: $n images"
  fi
}
for year in 2007 2012; do
  for sub in Annotations ImageSets/Main JPEGImages; do
    [[ -d "$ROOT/VOC$year/$sub" ]] || { echo "MISSING  $ROOT/VOC$year/$sub"; status=1; }
  done
done
check_split 2007 trainval 5011
check_split 2007 test 4952
check_split 2012 trainval 11540

if [[ $status == 0 ]]; then
  echo "VOC is ready: voc_2007_trainval, voc_2012_trainval, voc_2007_2012_trainval, voc_2007_test"
else
  echo "VOC is NOT complete under $ROOT (see above; datasets/README.md)"
fi
exit $status
