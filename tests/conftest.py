import os

import torch

# Without a GPU the Triton kernels run through Triton's interpreter. The variable is read when a
# kernel is decorated, so it must be set before any slatte kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
