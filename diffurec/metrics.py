"""The ranking metrics every step reports (docs/formats.md): HR@K and NDCG@K in percent.

No torch here: the gate, the registry and the command line read metric names without loading
a model.
"""

from __future__ import annotations

KS = (5, 10, 20)
METRIC_KEYS = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS)
