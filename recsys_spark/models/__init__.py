"""Models: baselines (popularity, EASE), Spark ALS, and the neural models."""
