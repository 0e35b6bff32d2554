// Element-wise math of bias_act, shared by the CPU (C++) and CUDA kernels.
//
// Every function works on s = x + b (the biased input, before the activation):
//   mode 0: y  = clamp(f(s) * gain)
//   mode 1: dx = g1 * gain * f'(s)            (zero where the forward output was clamped)
//   mode 2: dx = g1 * g2 * gain * f''(s)      (same mask; g1 = grad of dx, g2 = dy)
// The clamp mask matches torch.clamp's backward: the gradient passes where
// -clamp <= f(s) * gain <= clamp (inclusive) and is zero elsewhere.
//
// Activation indices match ActSpec.cuda_idx in stylemix/ops/bias_act.py.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define SM_HD __host__ __device__ __forceinline__
#else
#define SM_HD inline
#endif

namespace stylemix {

enum Act : int {
  kLinear = 1,
  kRelu = 2,
  kLrelu = 3,
  kTanh = 4,
  kSigmoid = 5,
  kElu = 6,
  kSelu = 7,
  kSoftplus = 8,
  kSwish = 9,
};

// Precision-matched wrappers (float math for float, double math for double).
SM_HD float sm_exp(float v) { return expf(v); }
SM_HD double sm_exp(double v) { return exp(v); }
SM_HD float sm_expm1(float v) { return expm1f(v); }
SM_HD double sm_expm1(double v) { return expm1(v); }
SM_HD float sm_log1p(float v) { return log1pf(v); }
SM_HD double sm_log1p(double v) { return log1p(v); }
SM_HD float sm_tanh(float v) { return tanhf(v); }
SM_HD double sm_tanh(double v) { return tanh(v); }

template <typename T>
SM_HD T sm_sigmoid(T v) {
  return T(1) / (T(1) + sm_exp(-v));
}

// SELU constants (Klambauer et al. 2017), the values torch.nn.functional.selu uses.
template <typename T>
SM_HD T selu_lambda() { return T(1.0507009873554804934193349852946); }
template <typename T>
SM_HD T selu_alpha() { return T(1.6732632423543772848170429916717); }

// torch.nn.functional.softplus switches to the identity above this input (beta = 1).
template <typename T>
SM_HD T softplus_threshold() { return T(20); }

// f(s)
template <int A, typename T>
SM_HD T act_forward(T s, T alpha) {
  if constexpr (A == kLinear) {
    return s;
  } else if constexpr (A == kRelu) {
    return s < T(0) ? T(0) : s;
  } else if constexpr (A == kLrelu) {
    const T neg = s * alpha;  // unconditional, so the select below vectorises
    return s > T(0) ? s : neg;
  } else if constexpr (A == kTanh) {
    return sm_tanh(s);
  } else if constexpr (A == kSigmoid) {
    return sm_sigmoid(s);
  } else if constexpr (A == kElu) {
    return s > T(0) ? s : sm_expm1(s);
  } else if constexpr (A == kSelu) {
    return s > T(0) ? selu_lambda<T>() * s : selu_lambda<T>() * selu_alpha<T>() * sm_expm1(s);
  } else if constexpr (A == kSoftplus) {
    return s > softplus_threshold<T>() ? s : sm_log1p(sm_exp(s));
  } else {  // kSwish
    return s * sm_sigmoid(s);
  }
}

// t * f'(s); written as a product with t so that relu/lrelu round exactly like autograd does.
template <int A, typename T>
SM_HD T act_grad(T s, T t, T alpha) {
  if constexpr (A == kLinear) {
    return t;
  } else if constexpr (A == kRelu) {
    return s > T(0) ? t : T(0);
  } else if constexpr (A == kLrelu) {
    const T neg = t * alpha;
    return s > T(0) ? t : neg;
  } else if constexpr (A == kTanh) {
    T y = sm_tanh(s);
    return t * (T(1) - y * y);
  } else if constexpr (A == kSigmoid) {
    T y = sm_sigmoid(s);
    return t * (y * (T(1) - y));
  } else if constexpr (A == kElu) {
    return s > T(0) ? t : t * sm_exp(s);
  } else if constexpr (A == kSelu) {
    return s > T(0) ? t * selu_lambda<T>() : t * (selu_lambda<T>() * selu_alpha<T>() * sm_exp(s));
  } else if constexpr (A == kSoftplus) {
    return s > softplus_threshold<T>() ? t : t * sm_sigmoid(s);
  } else {  // kSwish: sigma * (1 + s * (1 - sigma))
    T c = sm_sigmoid(s);
    return t * (c * (T(1) + s * (T(1) - c)));
  }
}

// t * f''(s); zero for the piecewise-linear activations.
template <int A, typename T>
SM_HD T act_grad2(T s, T t, T alpha) {
  (void)alpha;
  if constexpr (A == kLinear || A == kRelu || A == kLrelu) {
    (void)s;
    (void)t;
    return T(0);
  } else if constexpr (A == kTanh) {
    T y = sm_tanh(s);
    return t * (T(-2) * y * (T(1) - y * y));
  } else if constexpr (A == kSigmoid) {
    T y = sm_sigmoid(s);
    return t * (y * (T(1) - y) * (T(1) - T(2) * y));
  } else if constexpr (A == kElu) {
    return s > T(0) ? T(0) : t * sm_exp(s);
  } else if constexpr (A == kSelu) {
    return s > T(0) ? T(0) : t * (selu_lambda<T>() * selu_alpha<T>() * sm_exp(s));
  } else if constexpr (A == kSoftplus) {
    if (s > softplus_threshold<T>()) return T(0);
    T c = sm_sigmoid(s);
    return t * (c * (T(1) - c));
  } else {  // kSwish: sigma (1 - sigma) (2 + s (1 - 2 sigma))
    T c = sm_sigmoid(s);
    return t * (c * (T(1) - c) * (T(2) + s * (T(1) - T(2) * c)));
  }
}

// One element of any mode. `g1`, `g2` are ignored where the mode does not use them.
// CLAMP: whether clamp >= 0 (the clamp test needs the un-clamped forward value).
template <int A, int MODE, bool CLAMP, typename T>
SM_HD T bias_act_elem(T s, T g1, T g2, T alpha, T gain, T clamp) {
  if constexpr (MODE == 0) {
    T y = act_forward<A>(s, alpha) * gain;
    if constexpr (CLAMP) y = y < -clamp ? -clamp : (y > clamp ? clamp : y);
    return y;
  } else {
    const T d = MODE == 1 ? act_grad<A>(s, g1 * gain, alpha) : act_grad2<A>(s, g1 * g2 * gain, alpha);
    if constexpr (CLAMP) {
      const T y = act_forward<A>(s, alpha) * gain;
      return (y >= -clamp && y <= clamp) ? d : T(0);
    } else {
      return d;
    }
  }
}

// Whether the element function reads s at all (linear without clamp does not).
template <int A, int MODE, bool CLAMP>
SM_HD constexpr bool bias_act_needs_input() {
  return MODE == 0 || CLAMP || A != kLinear;
}

}  // namespace stylemix
