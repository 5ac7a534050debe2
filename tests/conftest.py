import os

import torch

# Triton kernels run through its interpreter on machines without a GPU. The switch must be set
# before any Triton kernel is defined, i.e. before m4v.kernels.triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
