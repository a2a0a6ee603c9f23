"""Raw events in: reading sources (:mod:`~recsys_spark.ingest.sources`), cleaning them
(:mod:`~recsys_spark.ingest.cleaning`, ``jobs/clean_events.py``) and the embedded
synthetic event-log generator (:mod:`~recsys_spark.ingest.synthetic`, ``jobs/generate_events.py``)."""
