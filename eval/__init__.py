"""Evaluation of frozen pretrained encoders: linear probe, weighted kNN and result tables."""
