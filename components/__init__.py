"""Kubeflow components: one per pipeline step, each a thin wrapper around one `diffurec` command.

They are lightweight Python components: Kubeflow runs each body in the project's image
(IMAGE, built from the Dockerfile), and `diffurec pipeline local` runs the same bodies in this
virtual environment with kfp's SubprocessRunner. A body only imports `diffurec` and calls the
command line's entry point, so the DVC stages (dvc.yaml) and the pipeline run the same code.
Bodies are self-contained (Kubeflow ships each function's source alone): no module-level helpers.
"""

import os

# The image every step runs in on a cluster (the deployment's Dockerfile builds and tags it);
# CI sets DIFFUREC_IMAGE to the image built for the commit when it compiles and submits.
IMAGE = os.environ.get("DIFFUREC_IMAGE", "ghcr.io/diffurec/diffurec:0.1.0")
