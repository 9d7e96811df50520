"""Kubeflow components: one per pipeline step, each a thin wrapper around one `diffurec` command.

They are lightweight Python components: Kubeflow runs each body in the project's image
(IMAGE, built from the Dockerfile), and `diffurec pipeline local` runs the same bodies in this
virtual environment with kfp's SubprocessRunner. A body only imports `diffurec` and calls the
command line's entry point, so the DVC stages (dvc.yaml) and the pipeline run the same code.
Bodies are self-contained (Kubeflow ships each function's source alone): no module-level helpers.
"""

import os

from diffurec import __version__

# The image every step runs in on a cluster (the deployment's Dockerfile builds and tags it):
# by default this version's release image, which .github/workflows/release.yml pushes for the
# tag v<version> (k8s/ names the same one; tests/test_image.py); retrain.yml compiles with the
# image it built for the commit instead (`pipeline compile --image`, or $DIFFUREC_IMAGE).
RELEASE_REPOSITORY = "ghcr.io/diffurec/diffurec"
IMAGE = os.environ.get("DIFFUREC_IMAGE", f"{RELEASE_REPOSITORY}:{__version__}")
