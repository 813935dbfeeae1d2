"""Training: one module per model (`digits`, `catdog`, `sentiment`), data loaders in `training.datasets`.

Run `python -m training <model> --help`. Importing this package does not import TensorFlow.
"""
