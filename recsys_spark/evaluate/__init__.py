"""Judging every model the same way (``jobs/evaluate.py`` and the training jobs' selection).

* :mod:`~recsys_spark.evaluate.ranking`: full-ranking metrics and the comparison tables;
* :mod:`~recsys_spark.evaluate.folds`: a held-out fold's users, their top-K from a scorer,
  its metrics and the ``eval_recs`` the evaluate job reads.
"""
