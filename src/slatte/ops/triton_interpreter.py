"""Whether Triton's kernels run through its CPU interpreter (`TRITON_INTERPRET=1`).

The tests set it (tests/conftest.py) so that CI, which has no GPU, runs the kernels; the ops
then accept CPU tensors for their Triton paths and avoid what the interpreter does not do
faithfully (bf16 arithmetic)."""

from __future__ import annotations

import os


def triton_interpreting() -> bool:
    """True under `TRITON_INTERPRET=1`; read on each call, as tests switch it."""
    return os.environ.get("TRITON_INTERPRET") == "1"
