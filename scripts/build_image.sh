#!/usr/bin/env bash
# Builds the project image without a container daemon or an image registry, and runs one
# command in it. Machines here cannot pull images, so the CUDA PyTorch base of the Dockerfile
# is replaced by a locally made one: a Debian root file system (debootstrap, from the apt
# mirror this machine is configured with), a Python venv at /opt/conda (where the pytorch/pytorch
# images keep theirs) holding the CPU torch wheel, and a wheelhouse of every pinned
# requirement so that pip inside the build needs no index. The Dockerfile itself is unchanged.
#
#   bash scripts/build_image.sh   # -> localhost/diffurec:<version>; then runs `diffurec --version`,
#                                 # `id` and (with ../shared/data) `diffurec preprocess` on ML-100K in it
#   KEEP_WORK=1 bash scripts/build_image.sh
#
# Needs root (debootstrap, chroot) and Debian's podman, buildah and debootstrap (installed when
# missing). About 10 minutes the first time (debootstrap, wheels), then a few.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image="localhost/diffurec:${version}"
base_image="localhost/diffurec-local-base:bookworm-py311-torch2.13.0-cpu"
work=${WORK_DIR:-/var/tmp/diffurec-image-build}
log() { echo "build_image: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "error: needs root (debootstrap and chroot)"; exit 2
fi
need=()
command -v podman >/dev/null || need+=(podman)
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$work"
rootfs="$work/rootfs"
wheels="$work/wheels"

# 1. The wheelhouse: every pin of requirements.txt/constraints.txt (torch is the CPU wheel
#    this machine's pip finds) and the MLflow server's PostgreSQL driver.
if [ ! -f "$wheels/.complete" ]; then
  log "downloading the pinned wheels into $wheels"
  mkdir -p "$wheels"
  .venv/bin/pip download -q -d "$wheels" -r requirements.txt psycopg2-binary==2.9.11 setuptools==80.9.0
  # Source-only packages become wheels here, so nothing is compiled inside the image build.
  for sdist in "$wheels"/*.tar.gz; do
    [ -e "$sdist" ] || continue
    .venv/bin/pip wheel -q --no-deps -w "$wheels" "$sdist" && rm "$sdist"
  done
  touch "$wheels/.complete"
fi

# 2. The base image, made once: Debian bookworm (Python 3.11, as on these machines).
if ! podman image exists "$base_image"; then
  if [ ! -f "$rootfs/.complete" ]; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
    [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
    log "debootstrap bookworm from $mirror (a few minutes)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >"$work/debootstrap.log"
    chroot "$rootfs" python3 -m venv /opt/conda
    # The stand-in for the CUDA base's own torch (env -i: none of this machine's pip settings).
    mkdir -p "$rootfs/wheels"
    cp "$wheels"/torch-*.whl "$rootfs/wheels/"
    env -i PATH=/usr/bin:/bin chroot "$rootfs" /opt/conda/bin/pip install -q --no-index --find-links=/wheels torch==2.13.0
    rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
    touch "$rootfs/.complete"
  fi
  rm -rf "$rootfs/wheels" && mkdir -p "$rootfs/wheels" && cp "$wheels"/*.whl "$rootfs/wheels/"
  log "importing $base_image"
  tar --exclude=./.complete -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_NO_INDEX=1' --change 'ENV PIP_FIND_LINKS=/wheels' \
    - "$base_image" >/dev/null
fi

# 3. The project image from the unchanged Dockerfile (chroot isolation shares the host network,
#    but pip inside uses only the wheelhouse: PIP_NO_INDEX in the base).
log "building $image"
# --format docker: the OCI format drops the Dockerfile's SHELL instruction (pipefail).
podman build --isolation=chroot --format docker \
  --build-arg "BASE_IMAGE=$base_image" --build-arg "VERSION=$version" \
  -t "$image" -f Dockerfile . >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; exit 1; }

# 4. Commands in the image, as its non-root user. `podman run` cannot start containers on
#    these machines (crun: setrlimit RLIMIT_NOFILE/RLIMIT_NPROC: Operation not permitted), so
#    they run with buildah's chroot isolation, as the build's own RUN steps do.
container=$(buildah from "$image")
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
log "running in $image: diffurec --version; id"
buildah run --isolation chroot "$container" -- diffurec --version
buildah run --isolation chroot "$container" -- id
raw=../shared/data/ml-100k/ml-100k.inter
if [ -f "$raw" ]; then
  out=$(mktemp -d) && chmod 777 "$out"
  log "running in $image: diffurec preprocess on ML-100K"
  buildah run --isolation chroot -v "$(realpath "$(dirname "$raw")")":/data:ro -v "$out":/out "$container" -- \
    diffurec -q preprocess --input /data/ml-100k.inter --out /out/splits
  test -f "$out/splits/format.json"
  rm -rf "$out"
fi
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$rootfs"; fi
log "done: $image"
