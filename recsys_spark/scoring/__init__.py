"""Scoring users against the catalog: the one home of every scorer and of blocked top-K.

* :mod:`~recsys_spark.scoring.blocked`: ``top_k`` over a Spark DataFrame of users, batch by batch;
* :mod:`~recsys_spark.scoring.scorers`: dot-product, item-item and catalog-wide scorers;
* :mod:`~recsys_spark.scoring.torch_model`: a trained neural model's forward pass as a scorer;
* :mod:`~recsys_spark.scoring.topk`: the torch kernels (masking to -inf, top-k rows) every scorer and the trainer's validation share.
"""
