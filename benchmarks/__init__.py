"""`gpt1 bench`: benchmarks of the fused kernels, training, data and generation (imported as ``gpt1_benchmarks``)."""
