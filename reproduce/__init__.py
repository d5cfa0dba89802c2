"""The paper's Table 2 and Table 3 end to end: plan, pretrain, probe, aggregate (``python -m reproduce``)."""
