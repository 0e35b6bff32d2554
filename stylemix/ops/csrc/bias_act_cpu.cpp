// bias_act CPU kernels: one fused pass over memory for the forward, the first and the second
// derivative. Each work item is a contiguous span whose loop the compiler vectorises at -O3 for
// the piecewise-linear activations (the StyleGAN2 hot path: lrelu and linear); the others call
// libm per element. No torch headers here (see cpu_kernels.h).
#include <algorithm>
#include <cstdint>

#include "bias_act_math.h"
#include "cpu_kernels.h"

namespace stylemix {
namespace cpu {
namespace {

// Elements [0, n) of one span; BVEC: bias b[i] per element, else the scalar `bias` for all.
template <typename T, int A, int MODE, bool CLAMP, bool BVEC>
void span(T* __restrict y, const T* __restrict x, const T* __restrict b, T bias, const T* __restrict g1,
          const T* __restrict g2, int64_t n, T alpha, T gain, T clamp) {
  for (int64_t i = 0; i < n; ++i) {
    T s = T(0);
    if constexpr (bias_act_needs_input<A, MODE, CLAMP>()) s = x[i] + (BVEC ? b[i] : bias);
    const T a = MODE >= 1 ? g1[i] : T(0);
    const T c = MODE == 2 ? g2[i] : T(0);
    y[i] = bias_act_elem<A, MODE, CLAMP>(s, a, c, alpha, gain, clamp);
  }
}

template <typename T, int A, int MODE, bool CLAMP>
void run(const BiasActArgs<T>& p, int64_t i0, int64_t i1) {
  constexpr bool kNeedX = bias_act_needs_input<A, MODE, CLAMP>();
  const int64_t n = bias_act_item_size(p);
  if (p.b != nullptr && p.inner == 1) {
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t o = it * n;
      span<T, A, MODE, CLAMP, true>(p.y + o, kNeedX ? p.x + o : nullptr, p.b, T(0), MODE >= 1 ? p.g1 + o : nullptr,
                                    MODE == 2 ? p.g2 + o : nullptr, n, p.alpha, p.gain, p.clamp);
    }
  } else {
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t o = it * n;
      const T bias = p.b != nullptr ? p.b[it % p.channels] : T(0);
      span<T, A, MODE, CLAMP, false>(p.y + o, kNeedX ? p.x + o : nullptr, nullptr, bias,
                                     MODE >= 1 ? p.g1 + o : nullptr, MODE == 2 ? p.g2 + o : nullptr, n, p.alpha,
                                     p.gain, p.clamp);
    }
  }
}

template <typename T, int A>
bool dispatch_mode(const BiasActArgs<T>& p, int64_t i0, int64_t i1) {
  const bool clamp = p.clamp >= T(0);
  switch (p.mode * 2 + (clamp ? 1 : 0)) {
    case 0: run<T, A, 0, false>(p, i0, i1); return true;
    case 1: run<T, A, 0, true>(p, i0, i1); return true;
    case 2: run<T, A, 1, false>(p, i0, i1); return true;
    case 3: run<T, A, 1, true>(p, i0, i1); return true;
    case 4:
    case 5:
      // the second derivative of a piecewise-linear activation is zero; callers skip it
      if constexpr (A == kLinear || A == kRelu || A == kLrelu) {
        return false;
      } else {
        if (clamp) run<T, A, 2, true>(p, i0, i1);
        else run<T, A, 2, false>(p, i0, i1);
        return true;
      }
  }
  return false;
}

template <typename T>
bool dispatch_act(const BiasActArgs<T>& p, int64_t i0, int64_t i1) {
  switch (p.act) {
    case kLinear: return dispatch_mode<T, kLinear>(p, i0, i1);
    case kRelu: return dispatch_mode<T, kRelu>(p, i0, i1);
    case kLrelu: return dispatch_mode<T, kLrelu>(p, i0, i1);
    case kTanh: return dispatch_mode<T, kTanh>(p, i0, i1);
    case kSigmoid: return dispatch_mode<T, kSigmoid>(p, i0, i1);
    case kElu: return dispatch_mode<T, kElu>(p, i0, i1);
    case kSelu: return dispatch_mode<T, kSelu>(p, i0, i1);
    case kSoftplus: return dispatch_mode<T, kSoftplus>(p, i0, i1);
    case kSwish: return dispatch_mode<T, kSwish>(p, i0, i1);
  }
  return false;
}

}  // namespace

bool bias_act_run(const BiasActArgs<float>& a, int64_t i0, int64_t i1) { return dispatch_act(a, i0, i1); }
bool bias_act_run(const BiasActArgs<double>& a, int64_t i0, int64_t i1) { return dispatch_act(a, i0, i1); }

}  // namespace cpu
}  // namespace stylemix
