"""DiffuRec: train, evaluate and promote diffusion sequential recommenders."""

__version__ = "0.1.0"
