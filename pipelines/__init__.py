"""The Kubeflow pipeline (diffurec_pipeline.py), its runners (runners.py) and the
`diffurec pipeline` commands (cli.py)."""
