"""SLA on Hopper GPUs: FlashAttention-4's block-sparse kernels (CuTe DSL) run the sparse branch,
the Triton family's kernels the block map and the linear branch (`launchers.py`)."""
