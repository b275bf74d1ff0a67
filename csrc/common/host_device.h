// HOST_DEVICE: the one marker that lets a function compile for both the CPU kernels
// (plain C++) and the CUDA kernels (nvcc), so both run the same arithmetic.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline
#endif
