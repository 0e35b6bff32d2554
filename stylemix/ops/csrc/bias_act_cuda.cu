// bias_act CUDA kernels: one element per thread (grid-stride), the same element math as the CPU
// path (bias_act_math.h). float16 is computed in float32 and rounded once.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "bias_act_math.h"
#include "cuda_launchers.h"

namespace stylemix {
namespace cuda {
namespace {

template <typename T>
struct Acc {
  using type = T;
};
template <>
struct Acc<__half> {
  using type = float;
};

__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, double v) { p[i] = v; }

template <int A, int MODE, bool CLAMP, typename T, typename Index>
__device__ __forceinline__ void elem(T* y, const T* x, const T* b, const T* g1, const T* g2, Index i, Index channels,
                                     Index inner, typename Acc<T>::type alpha, typename Acc<T>::type gain,
                                     typename Acc<T>::type clamp) {
  using C = typename Acc<T>::type;
  C s = C(0);
  if constexpr (bias_act_needs_input<A, MODE, CLAMP>()) {
    s = load(x, i);
    if (b != nullptr) s += load(b, int64_t((i / inner) % channels));
  }
  const C a = MODE >= 1 ? load(g1, i) : C(0);
  const C c = MODE == 2 ? load(g2, i) : C(0);
  store(y, i, bias_act_elem<A, MODE, CLAMP>(s, a, c, alpha, gain, clamp));
}

// Activation and dtype are template parameters; mode, clamp and bias are uniform runtime branches.
template <typename T, int A, typename Index>
__global__ void bias_act_kernel(T* y, const T* x, const T* b, const T* g1, const T* g2, Index n, Index channels,
                                Index inner, int mode, typename Acc<T>::type alpha, typename Acc<T>::type gain,
                                typename Acc<T>::type clamp) {
  const Index stride = Index(blockDim.x) * Index(gridDim.x);
  const bool has_clamp = clamp >= 0;
  for (Index i = Index(blockIdx.x) * Index(blockDim.x) + Index(threadIdx.x); i < n; i += stride) {
    if (mode == 0) {
      if (has_clamp) elem<A, 0, true>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
      else elem<A, 0, false>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
    } else if (mode == 1) {
      if (has_clamp) elem<A, 1, true>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
      else elem<A, 1, false>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
    } else {
      if (has_clamp) elem<A, 2, true>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
      else elem<A, 2, false>(y, x, b, g1, g2, i, channels, inner, alpha, gain, clamp);
    }
  }
}

template <typename T, int A, typename Index>
int launch_typed(const BiasActArgs& a, cudaStream_t stream) {
  using C = typename Acc<T>::type;
  const int threads = 256;
  int64_t blocks = (a.numel + threads - 1) / threads;
  if (blocks > 65536) blocks = 65536;  // grid-stride loop covers the rest
  if (blocks < 1) blocks = 1;
  bias_act_kernel<T, A, Index><<<unsigned(blocks), threads, 0, stream>>>(
      static_cast<T*>(a.y), static_cast<const T*>(a.x), static_cast<const T*>(a.b), static_cast<const T*>(a.g1),
      static_cast<const T*>(a.g2), Index(a.numel), Index(a.channels), Index(a.inner), a.mode, C(a.alpha), C(a.gain),
      C(a.clamp));
  return int(cudaGetLastError());
}

template <typename T, int A>
int launch_index(const BiasActArgs& a, cudaStream_t stream) {
  // 32-bit index arithmetic (the per-element channel division) whenever it cannot overflow
  if (a.numel + 65536LL * 256LL < (int64_t(1) << 31)) return launch_typed<T, A, int32_t>(a, stream);
  return launch_typed<T, A, int64_t>(a, stream);
}

template <typename T>
int launch_act(const BiasActArgs& a, cudaStream_t stream) {
  switch (a.act) {
    case kLinear: return launch_index<T, kLinear>(a, stream);
    case kRelu: return launch_index<T, kRelu>(a, stream);
    case kLrelu: return launch_index<T, kLrelu>(a, stream);
    case kTanh: return launch_index<T, kTanh>(a, stream);
    case kSigmoid: return launch_index<T, kSigmoid>(a, stream);
    case kElu: return launch_index<T, kElu>(a, stream);
    case kSelu: return launch_index<T, kSelu>(a, stream);
    case kSoftplus: return launch_index<T, kSoftplus>(a, stream);
    case kSwish: return launch_index<T, kSwish>(a, stream);
  }
  return -1;
}

}  // namespace

int bias_act_launch(const BiasActArgs& a, CUstream_st* stream) {
  if (a.mode < 0 || a.mode > 2) return -1;
  if (a.numel == 0) return 0;
  switch (a.dtype) {
    case DType::kHalf: return launch_act<__half>(a, stream);
    case DType::kFloat: return launch_act<float>(a, stream);
    case DType::kDouble: return launch_act<double>(a, stream);
  }
  return -1;
}

}  // namespace cuda
}  // namespace stylemix
