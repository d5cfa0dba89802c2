"""Shard builders (``python -m data_prep ...``) and the streams that read the shards.

Builders turn the standard archives (CIFAR-10, STL-10, ImageNet, any ``class/image`` folder) into
WebDataset shards plus ``manifest.json``; pretraining and evaluation read only those shards through
:mod:`data_prep.jigsaw_stream`, :mod:`data_prep.infomax_stream` and :mod:`data_prep.eval_stream`.
"""
