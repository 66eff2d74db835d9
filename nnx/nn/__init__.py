"""Layers and losses, written once against the backend's `xp`."""

from nnx.nn.activations import ACTIVATIONS, ReLU, Sigmoid, Tanh
from nnx.nn.layer import Layer
from nnx.nn.linear import Linear
from nnx.nn.loss import SoftmaxCrossEntropy
from nnx.nn.sequential import Sequential, build_model, mlp_spec

__all__ = [
    "ACTIVATIONS",
    "Layer",
    "Linear",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "build_model",
    "mlp_spec",
]
