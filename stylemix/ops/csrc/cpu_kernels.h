// Torch-free interface between the CPU kernels (bias_act_cpu.cpp, upfirdn2d_cpu.cpp) and their
// torch binding (ops_cpu.cpp). The kernels work on raw contiguous buffers and a range of work
// items, so the binding can split the items over torch's thread pool (at::parallel_for) and the
// kernel files compile without torch's headers.
#pragma once

#include <stdint.h>

#include <vector>

namespace stylemix {
namespace cpu {

// ---- bias_act ------------------------------------------------------------------------------
// Layout: the tensor is [outer, channels, inner] (channels = size along `dim`), contiguous.
template <typename T>
struct BiasActArgs {
  T* y;
  const T* x;   // input without bias; may be null where the mode does not read it
  const T* b;   // bias [channels]; null = no bias
  const T* g1;  // incoming gradient (modes 1 and 2)
  const T* g2;  // dy (mode 2)
  int64_t outer, channels, inner;
  int act;   // stylemix::Act
  int mode;  // 0 forward, 1 first derivative, 2 second derivative
  T alpha, gain, clamp;  // clamp < 0: no clamp
};

// Work items: when the bias runs along the innermost dimension (b && inner == 1) an item is a
// row of `channels` elements (outer items); otherwise an item is a span of `inner` elements that
// share one bias value (outer * channels items).
template <typename T>
int64_t bias_act_items(const BiasActArgs<T>& a) {
  return (a.b != nullptr && a.inner == 1) ? a.outer : a.outer * a.channels;
}
template <typename T>
int64_t bias_act_item_size(const BiasActArgs<T>& a) {
  return (a.b != nullptr && a.inner == 1) ? a.channels : a.inner;
}

// Returns false for an unknown act/mode.
bool bias_act_run(const BiasActArgs<float>& a, int64_t item_begin, int64_t item_end);
bool bias_act_run(const BiasActArgs<double>& a, int64_t item_begin, int64_t item_end);

// ---- upfirdn2d -----------------------------------------------------------------------------
struct UpfirdnGeometry {
  int64_t planes, h, w;     // input [planes, h, w]
  int64_t out_h, out_w;     // output [planes, out_h, out_w]
  int64_t fh, fw;           // correlation filter [fh, fw]
  int64_t upx, upy, downx, downy, px0, py0;
};

struct UpfirdnXTap {
  int64_t j;     // filter column
  int64_t base;  // input column read by the first output (k = 0) of the phase class
  int64_t klo;   // the tap reads a real sample for outputs k in [klo, khi) of the class
  int64_t khi;
};

// Column taps per phase class; the same for every output row.
struct UpfirdnPlan {
  int64_t phases;  // P = upx / gcd(upx, downx)
  int64_t step;    // S = downx / gcd(upx, downx): input columns between outputs of a class
  int64_t kmax;    // longest class
  std::vector<int64_t> phase_begin;  // taps of class r: [phase_begin[r], phase_begin[r + 1])
  std::vector<int64_t> phase_len;    // outputs in class r
  std::vector<UpfirdnXTap> taps;
};

UpfirdnPlan upfirdn2d_plan(const UpfirdnGeometry& q);

// Output rows [row_begin, row_end) of all planes flattened (row = plane * out_h + oy).
void upfirdn2d_rows(const UpfirdnGeometry& q, const UpfirdnPlan& plan, const float* x, float* y, const float* g,
                    int64_t row_begin, int64_t row_end);
void upfirdn2d_rows(const UpfirdnGeometry& q, const UpfirdnPlan& plan, const double* x, double* y, const double* g,
                    int64_t row_begin, int64_t row_end);

}  // namespace cpu
}  // namespace stylemix
