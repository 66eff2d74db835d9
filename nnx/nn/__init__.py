"""Layers and losses, written once against the backend's `xp`."""

from nnx.nn.activations import ACTIVATIONS, ELU, GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from nnx.nn.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D, Reshape
from nnx.nn.layer import Layer
from nnx.nn.linear import Linear
from nnx.nn.loss import SoftmaxCrossEntropy
from nnx.nn.regularize import BatchNorm, Dropout
from nnx.nn.sequential import Sequential, build_model, mlp_spec

__all__ = [
    "ACTIVATIONS",
    "AvgPool2D",
    "BatchNorm",
    "Conv2D",
    "Dropout",
    "ELU",
    "Flatten",
    "GELU",
    "Layer",
    "LeakyReLU",
    "Linear",
    "MaxPool2D",
    "ReLU",
    "Reshape",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SoftmaxCrossEntropy",
    "Tanh",
    "build_model",
    "mlp_spec",
]
