// Index arithmetic of upfirdn2d shared by the CPU and CUDA kernels.
//
// The kernels compute a correlation with a filter g[fh][fw] (the Python side has already flipped
// and scaled the user's filter):
//   out[oy][ox] = sum_{i,j} g[i][j] * p[oy*down_y + i][ox*down_x + j]
// where p is the zero-upsampled input, padded by (pad0, pad1) on each axis (negative = crop).
// Along one axis, output o and tap k read the upsampled position u = o*down + k - pad0, which is a
// real input sample only if u % up == 0, namely input index u / up. The helpers below enumerate
// just those taps, so no multiply is spent on inserted zeros.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define SM_HDI __host__ __device__ __forceinline__
#else
#define SM_HDI inline
#endif

namespace stylemix {

// floor(a / b) and the non-negative remainder, for b > 0.
SM_HDI int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b > a) ? q - 1 : q;
}
SM_HDI int64_t pos_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

// First tap that lands on a real sample for output position `o`, and that sample's input index.
// Later taps are first_tap + up * t and read input index first_in + t.
struct TapStart {
  int64_t first_tap;
  int64_t first_in;
};

SM_HDI TapStart tap_start(int64_t o, int64_t up, int64_t down, int64_t pad0) {
  const int64_t u0 = o * down - pad0;
  const int64_t k0 = pos_mod(-u0, up);
  return TapStart{k0, (u0 + k0) / up};  // exact division
}

// Output size along one axis (the caller checks that it is >= 1).
SM_HDI int64_t upfirdn_out_size(int64_t in, int64_t up, int64_t down, int64_t pad0, int64_t pad1, int64_t taps) {
  const int64_t span = in * up + pad0 + pad1 - taps;
  return span < 0 ? 0 : span / down + 1;
}

SM_HDI int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// One output pixel (oy, ox) of one plane `xp` [h, w], accumulated in Acc: the loop the CUDA
// kernel runs per thread. The CPU library also exposes it (op `upfirdn2d_direct`) so that the
// tests check this exact code without a GPU. `to_acc` converts one input sample to Acc.
template <typename Acc, typename T, typename ToAcc>
SM_HDI Acc upfirdn_pixel(const T* xp, const Acc* g, int64_t h, int64_t w, int64_t fh, int64_t fw, int64_t upx,
                         int64_t upy, int64_t downx, int64_t downy, int64_t px0, int64_t py0, int64_t oy, int64_t ox,
                         ToAcc to_acc) {
  const TapStart ty = tap_start(oy, upy, downy, py0);
  const TapStart tx = tap_start(ox, upx, downx, px0);
  // skip the taps whose input index is negative
  int64_t i0 = ty.first_tap, iy0 = ty.first_in;
  if (iy0 < 0) {
    i0 += -iy0 * upy;
    iy0 = 0;
  }
  int64_t j0 = tx.first_tap, ix0 = tx.first_in;
  if (ix0 < 0) {
    j0 += -ix0 * upx;
    ix0 = 0;
  }
  Acc acc = Acc(0);
  for (int64_t i = i0, iy = iy0; i < fh && iy < h; i += upy, ++iy) {
    const T* xrow = xp + iy * w;
    const Acc* grow = g + i * fw;
    for (int64_t j = j0, ix = ix0; j < fw && ix < w; j += upx, ++ix) {
      acc += grow[j] * to_acc(xrow[ix]);
    }
  }
  return acc;
}

}  // namespace stylemix
