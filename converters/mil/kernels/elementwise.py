"""Kernels of MIL's elementwise ops (elementwise_unary, elementwise_binary, activation)."""

from __future__ import annotations

import numpy as np

from accelopt.converters.mil.kernels import Args, kernel


@kernel("add")
def add(a: Args):
    return np.add(a("x"), a("y"))


@kernel("sub")
def sub(a: Args):
    return np.subtract(a("x"), a("y"))


@kernel("mul")
def mul(a: Args):
    return np.multiply(a("x"), a("y"))


@kernel("relu")
def relu(a: Args):
    return np.maximum(a("x"), 0)


@kernel("cast")
def cast(a: Args):
    return np.asarray(a("x")).astype(a.out_dtype)


@kernel("identity")
def identity(a: Args):
    return a("x")
