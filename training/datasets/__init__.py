"""Dataset loaders (NumPy only; TensorFlow is imported lazily where a loader needs it)."""
