#!/usr/bin/env bash
# The Dockerfile's CUDA base image, pinned by digest: ARG BASE_IMAGE=REPOSITORY:TAG@sha256:DIGEST.
# A tag can be re-pushed; the digest names exactly the bytes every build starts from.
#
#   bash scripts/pin_base_image.sh           # resolve the tag in the Dockerfile to its current
#                                            # digest (docker buildx imagetools inspect) and write it
#   bash scripts/pin_base_image.sh TAG_REF   # move to another base (e.g. a newer CUDA PyTorch)
#   bash scripts/pin_base_image.sh --check   # exit 1 unless the base carries a digest (release.yml)
#
# Updating the base = run it (needs docker with buildx and access to the registry), build
# (bash scripts/build_image.sh or CI), commit the Dockerfile. The tag stays in the reference so
# that readers see which release it is; registries use only the digest.
set -euo pipefail
cd "$(dirname "$0")/.."

dockerfile=${DOCKERFILE:-Dockerfile}
current=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")
if [ -z "$current" ]; then
  echo "pin_base_image: no 'ARG BASE_IMAGE=' line in $dockerfile" >&2; exit 2
fi
if [ "${1:-}" = "--check" ]; then
  if [[ $current =~ @sha256:[0-9a-f]{64}$ ]]; then
    echo "pin_base_image: $dockerfile's base is pinned: $current"; exit 0
  fi
  echo "pin_base_image: $dockerfile's base $current has no digest: run bash scripts/pin_base_image.sh" >&2
  exit 1
fi

tag_ref=${1:-${current%@*}}
digest=$(docker buildx imagetools inspect --format '{{json .Manifest}}' "$tag_ref" \
  | sed -n 's/.*"digest": *"\(sha256:[0-9a-f]\{64\}\)".*/\1/p' | head -n1)
if [ -z "$digest" ]; then
  echo "pin_base_image: no digest for $tag_ref from docker buildx imagetools inspect" >&2; exit 1
fi
sed -i "s|^ARG BASE_IMAGE=.*|ARG BASE_IMAGE=${tag_ref}@${digest}|" "$dockerfile"
echo "pin_base_image: $dockerfile's base is now ${tag_ref}@${digest}"
