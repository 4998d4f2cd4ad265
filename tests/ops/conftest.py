"""Under Triton's interpreter, tf32 products behave as on the GPU's tensor cores.

The interpreter multiplies fp32 operands of a `tl.dot(..., input_precision="tf32")` exactly; the
tensor cores drop their low 13 mantissa bits (truncation). That one-sided error adds up over a
sum and made gradients fail on the GPU that passed here (tests/ops/test_sla_triton.py's one-row
key block), so the interpreter's products are truncated the same way for these tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from slatte.ops.triton_interpreter import triton_interpreting


def _truncate_tf32(x: np.ndarray) -> np.ndarray:
    return (x.view(np.int32) & -8192).view(np.float32) if x.dtype == np.float32 else x


@pytest.fixture(autouse=True, scope="session")
def tf32_like_the_gpu():
    if not triton_interpreting():
        yield
        return
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    exact_dot = builder.create_dot
    builder.exact_create_dot = exact_dot  # for `exact_products`

    def create_dot(self, a, b, d, input_precision, *rest):
        if str(input_precision).upper().endswith("TF32"):  # not TF32x3 or IEEE
            a = interpreter.TensorHandle(_truncate_tf32(a.data), a.dtype.scalar)
            b = interpreter.TensorHandle(_truncate_tf32(b.data), b.dtype.scalar)
        return exact_dot(self, a, b, d, input_precision, *rest)

    builder.create_dot = create_dot
    yield
    builder.create_dot = exact_dot


@pytest.fixture
def exact_products():
    """For one test: the interpreter's tf32 products exact again (see the module docstring)."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    truncating = builder.create_dot
    builder.create_dot = builder.exact_create_dot
    yield
    builder.create_dot = truncating
