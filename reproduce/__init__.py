"""The paper's Table 2 and Table 3 end to end: the run list, pretrain, probe, aggregate (``python -m reproduce``)."""
