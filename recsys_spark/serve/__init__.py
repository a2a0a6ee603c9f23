"""Serving: the published top-N per user (``jobs/recommend.py``).

One concern per module, in the order a run goes through them:

* :mod:`~recsys_spark.serve.select`: choosing the serving model and loading it;
* :mod:`~recsys_spark.serve.candidates`: each user's source (model or cold-start fallback) and candidate pool;
* :mod:`~recsys_spark.serve.rerank`: MMR re-ranking and explanations (plain NumPy);
* :mod:`~recsys_spark.serve.checks`: expected counts, the output contract, the quality gate;
* :mod:`~recsys_spark.serve.publish`: staging, manifest, atomic publish, ``_latest.json``, pruning;
* :mod:`~recsys_spark.serve.recommend`: the run itself;
* :mod:`~recsys_spark.serve.errors`: why a run cannot publish.
"""
