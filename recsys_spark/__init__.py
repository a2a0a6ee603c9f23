"""recsys-spark: a distributed batch recommender on Spark."""

__version__ = "0.1.0"
