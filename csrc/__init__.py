"""C++/CUDA sources of the fused membrane op, shipped as package data (`spmctl_csrc`)."""
