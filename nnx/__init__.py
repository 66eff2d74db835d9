"""nnx: a from-scratch neural network toolkit that runs on NumPy (CPU) or CuPy (GPU)."""

__version__ = "0.1.0"
