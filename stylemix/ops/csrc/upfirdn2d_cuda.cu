// upfirdn2d CUDA kernel: one output pixel per thread, visiting only the filter taps that land on
// real input samples (upfirdn2d_index.h), so zero insertion and padding cost nothing. A block
// covers a 32 x 8 tile of one plane (neighbouring threads read neighbouring input pixels) and keeps
// the filter in shared memory when it fits. float16 accumulates in float32.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "cuda_launchers.h"
#include "upfirdn2d_index.h"

namespace stylemix {
namespace cuda {
namespace {

constexpr int kTileX = 32;
constexpr int kTileY = 8;
constexpr int64_t kMaxSharedFilterBytes = 16 * 1024;

struct ToAcc {
  __device__ __forceinline__ float operator()(__half v) const { return __half2float(v); }
  __device__ __forceinline__ float operator()(float v) const { return v; }
  __device__ __forceinline__ double operator()(double v) const { return v; }
};
__device__ __forceinline__ void from_acc(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void from_acc(float* p, float v) { *p = v; }
__device__ __forceinline__ void from_acc(double* p, double v) { *p = v; }

struct Geometry {
  int64_t planes, h, w, out_h, out_w, fh, fw;
  int64_t upx, upy, downx, downy, px0, py0;
};

// SHARED: stage the filter in dynamic shared memory (fh * fw * sizeof(Acc) bytes).
template <typename T, typename Acc, bool SHARED>
__global__ void upfirdn2d_kernel(const T* __restrict__ x, T* __restrict__ y, const Acc* __restrict__ g_global,
                                 Geometry q) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Acc* g = g_global;
  if (SHARED) {
    Acc* gs = reinterpret_cast<Acc*>(smem_raw);
    const int64_t taps = q.fh * q.fw;
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    for (int64_t k = tid; k < taps; k += blockDim.x * blockDim.y) gs[k] = g_global[k];
    __syncthreads();
    g = gs;
  }
  const int64_t ox = int64_t(blockIdx.x) * kTileX + threadIdx.x;
  const int64_t oy = int64_t(blockIdx.y) * kTileY + threadIdx.y;
  if (ox >= q.out_w || oy >= q.out_h) return;  // after the only __syncthreads
  for (int64_t plane = blockIdx.z; plane < q.planes; plane += gridDim.z) {
    const Acc v = upfirdn_pixel<Acc>(x + plane * q.h * q.w, g, q.h, q.w, q.fh, q.fw, q.upx, q.upy, q.downx, q.downy,
                                     q.px0, q.py0, oy, ox, ToAcc());
    from_acc(y + (plane * q.out_h + oy) * q.out_w + ox, v);
  }
}

template <typename T, typename Acc>
int launch_typed(const UpfirdnArgs& a, cudaStream_t stream) {
  Geometry q{a.planes, a.h, a.w, a.out_h, a.out_w, a.fh, a.fw, a.upx, a.upy, a.downx, a.downy, a.px0, a.py0};
  const int64_t gx = (a.out_w + kTileX - 1) / kTileX;
  const int64_t gy = (a.out_h + kTileY - 1) / kTileY;
  if (gx > 2147483647LL || gy > 65535) return int(cudaErrorInvalidValue);
  const int64_t gz = a.planes < 65535 ? a.planes : 65535;  // the kernel loops over the rest
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(gz)};
  const dim3 block{unsigned(kTileX), unsigned(kTileY), 1u};
  const int64_t filter_bytes = a.fh * a.fw * int64_t(sizeof(Acc));
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const Acc* g = static_cast<const Acc*>(a.g);
  if (filter_bytes <= kMaxSharedFilterBytes) {
    upfirdn2d_kernel<T, Acc, true><<<grid, block, size_t(filter_bytes), stream>>>(x, y, g, q);
  } else {
    upfirdn2d_kernel<T, Acc, false><<<grid, block, 0, stream>>>(x, y, g, q);
  }
  return int(cudaGetLastError());
}

}  // namespace

int upfirdn2d_launch(const UpfirdnArgs& a, CUstream_st* stream) {
  if (a.planes == 0 || a.out_h == 0 || a.out_w == 0) return 0;
  switch (a.dtype) {
    case DType::kHalf: return launch_typed<__half, float>(a, stream);
    case DType::kFloat: return launch_typed<float, float>(a, stream);
    case DType::kDouble: return launch_typed<double, double>(a, stream);
  }
  return -1;
}

}  // namespace cuda
}  // namespace stylemix
