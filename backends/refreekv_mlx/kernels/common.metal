// Shared header of the ReFreeKV Metal kernels (passed as `header=` to mx.fast.metal_kernel).
//
// Plain constants only, so that the same text also compiles as C++ through the CPU shim
// (backends/refreekv_mlx/cpu_shim/metal_shim.h), which is how these kernels are tested on Linux.

// Largest head dimension the window kernel stages in threadgroup memory (2 KiB of floats).
#define REFREEKV_MAX_HEAD_DIM 512

// Largest threadgroup the kernels are launched with (Apple GPUs allow up to 1024 threads).
#define REFREEKV_MAX_THREADS 1024
