# The DiffuRec image: every pipeline step, the PyTorchJob and the MLflow server run it.
#   podman build -t ghcr.io/diffurec/diffurec:0.1.0 \
#     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" \
#     --build-arg IMAGE_REF=ghcr.io/diffurec/diffurec:0.1.0 .   (or docker build)
#   podman run --rm ghcr.io/diffurec/diffurec:0.1.0 --help
# CI pushes one image per commit, ghcr.io/OWNER/diffurec:<sha> (retrain.yml, whose spec runs
# it by digest), and per release ghcr.io/diffurec/diffurec:<version> (release.yml, tags v*):
# the one the committed spec and k8s/ name (tests/test_image.py holds them equal).
# BASE_IMAGE is a CUDA build of PyTorch; its torch is kept as it is: requirements.txt pins
# torch==2.13.0 for the CPU machines, so that line is dropped from the install below.
# Pinned by digest (REPOSITORY:TAG@sha256:...): `bash scripts/pin_base_image.sh [TAG_REF]`
# resolves the tag with `docker buildx imagetools inspect` and writes the digest here; the
# release workflow refuses a base without one (scripts/pin_base_image.sh --check).
ARG BASE_IMAGE=docker.io/pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="diffurec" \
      org.opencontainers.image.description="Train, evaluate and promote DiffuRec sequential recommenders" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_ENABLE_TELEMETRY=false \
    DO_NOT_TRACK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/diffurec

# Dependencies first (their layer survives code changes): the exact pins of requirements.txt
# and constraints.txt without torch, plus the PostgreSQL driver of the MLflow server.
COPY requirements.txt constraints.txt ./
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && grep -v -e '^torch==' -e '^-c ' requirements.txt > /tmp/requirements.txt \
    && python -c 'import torch; print("base image torch", torch.__version__, "cuda", torch.version.cuda)' \
    && python -m pip install -c /tmp/constraints.txt -r /tmp/requirements.txt psycopg2-binary==2.9.11 \
    && rm /tmp/constraints.txt /tmp/requirements.txt

COPY pyproject.toml README.md ./
# The library, and the pipeline package and components whose steps run in this image.
COPY diffurec ./diffurec
COPY pipelines ./pipelines
COPY components ./components
RUN python -m pip install --no-deps . \
    && python -m pip check \
    && useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin diffurec \
    && diffurec --version

# The commit the image is built from and its own name: every model trained or registered in
# it records them (diffurec.lineage; there is no .git in the image). CI passes both. Last, so
# that a new commit rebuilds no layer above.
ARG GIT_COMMIT=""
ARG IMAGE_REF=""
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"
ENV DIFFUREC_GIT_COMMIT="${GIT_COMMIT}" \
    DIFFUREC_IMAGE_REF="${IMAGE_REF}"

USER 1000:1000
WORKDIR /home/diffurec
ENTRYPOINT ["diffurec"]
CMD ["--help"]
