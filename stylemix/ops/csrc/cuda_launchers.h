// Torch-free interface between the CUDA kernels (bias_act_cuda.cu, upfirdn2d_cuda.cu) and their
// torch binding (cuda_ops.cpp). The .cu files include only the CUDA runtime and this project's
// headers, so they compile with a plain `nvcc -c` (no torch headers needed).
#pragma once

#include <stdint.h>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace stylemix {
namespace cuda {

enum class DType : int { kHalf = 0, kFloat = 1, kDouble = 2 };

// ---- bias_act: tensor viewed as [outer, channels, inner], contiguous ------------------------
struct BiasActArgs {
  void* y;
  const void* x;   // input without bias; null where the mode does not read it
  const void* b;   // bias [channels] or null
  const void* g1;  // incoming gradient (modes 1, 2)
  const void* g2;  // dy (mode 2)
  int64_t numel;
  int64_t channels;
  int64_t inner;
  int act;   // stylemix::Act
  int mode;  // 0 forward, 1 first derivative, 2 second derivative
  double alpha, gain, clamp;  // clamp < 0: no clamp
  DType dtype;
};

// Returns a cudaError_t value (0 = success); -1 for an unsupported act / mode.
int bias_act_launch(const BiasActArgs& a, CUstream_st* stream);

// ---- upfirdn2d ------------------------------------------------------------------------------
struct UpfirdnArgs {
  const void* x;  // [planes, h, w]
  void* y;        // [planes, out_h, out_w]
  const void* g;  // [fh, fw] correlation filter: float for half/float x, double for double x
  int64_t planes, h, w, out_h, out_w, fh, fw;
  int64_t upx, upy, downx, downy, px0, py0;
  DType dtype;
};

int upfirdn2d_launch(const UpfirdnArgs& a, CUstream_st* stream);

}  // namespace cuda
}  // namespace stylemix
