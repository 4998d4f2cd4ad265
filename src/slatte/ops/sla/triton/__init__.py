"""The Triton kernel family of SLA: kernels (`kernels_*.py`), their launchers, tiles, and the
stage-fitting launch helper. Imported only where Triton runs (the op, the block map on CUDA)."""
