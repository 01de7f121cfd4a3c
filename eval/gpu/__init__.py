"""GPU checks and micro-benchmarks: the GPU test tier, CUDA-graph checks, attention backends, GEMM fusion,
step profiles (README.md)."""
