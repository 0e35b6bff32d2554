// Torch binding of the CPU kernels: argument checks, output allocation, threading
// (at::parallel_for over the kernels' work items) and op registration in the namespace
// STYLEMIX_NS (set by the build to stylemix_cpu_<hash>, so two builds can coexist).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>

#include "bias_act_math.h"
#include "cpu_kernels.h"
#include "upfirdn2d_index.h"

#ifndef STYLEMIX_NS
#define STYLEMIX_NS stylemix_cpu
#endif

namespace {

using namespace stylemix::cpu;

constexpr int64_t kGrainElems = int64_t(1) << 15;  // per task; smaller tensors stay on one thread

void check_same(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == like.scalar_type(), "bias_act: ", what,
              " must have the device and dtype of x");
  TORCH_CHECK(t.sizes() == like.sizes(), "bias_act: ", what, " has shape ", t.sizes(), ", expected ", like.sizes());
}

template <typename T>
void bias_act_launch(BiasActArgs<T> a) {
  const int64_t items = bias_act_items(a);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, bias_act_item_size(a)));
  std::atomic<bool> ok{true};
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    if (!bias_act_run(a, i0, i1)) ok = false;
  });
  TORCH_CHECK(ok.load(), "bias_act_cpu: unsupported act ", a.act, " / mode ", a.mode);
}

// mode 0: y = clamp(act(x + b) * gain); mode 1: dx from g1 = dy; mode 2: g1 = grad of dx, g2 = dy.
// x may be empty where the mode does not read it (linear without clamp, modes 1 and 2).
at::Tensor bias_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& b_opt, const at::Tensor& g1,
                        const at::Tensor& g2, int64_t mode, int64_t dim, int64_t act, double alpha, double gain,
                        double clamp) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act_cpu: mode must be 0, 1 or 2");
  const at::Tensor& like = mode == 0 ? x : g1;
  TORCH_CHECK(like.device().is_cpu(), "bias_act_cpu: tensors must be on the CPU");
  const auto dtype = like.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "bias_act_cpu: float32 or float64 only, got ", dtype);
  const bool has_x = mode == 0 || x.defined() && x.numel() == like.numel() && x.dim() == like.dim();
  const bool needs_x = mode == 0 || clamp >= 0 || act != stylemix::kLinear;
  TORCH_CHECK(has_x || !needs_x, "bias_act_cpu: x is required for this activation / clamp");
  at::Tensor xc = has_x ? x.contiguous() : at::Tensor();
  if (has_x) check_same(xc, like, "x");
  at::Tensor g1c = mode >= 1 ? g1.contiguous() : at::Tensor();
  at::Tensor g2c = mode == 2 ? g2.contiguous() : at::Tensor();
  if (mode == 2) check_same(g2c, like, "dy");
  at::Tensor b;
  if (b_opt.has_value() && b_opt->defined()) {
    b = b_opt->contiguous();
    TORCH_CHECK(b.dim() == 1 && b.scalar_type() == dtype && b.device() == like.device(),
                "bias_act_cpu: b must be a 1D tensor with the dtype and device of x");
    TORCH_CHECK(dim >= 0 && dim < like.dim(), "bias_act_cpu: dim ", dim, " out of range");
    TORCH_CHECK(b.size(0) == like.size(dim), "bias_act_cpu: b has ", b.size(0), " elements, x has ",
                like.size(dim), " along dim ", dim);
  }

  at::Tensor y = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  if (like.numel() == 0) return y;
  int64_t outer = 1, channels = 1, inner = like.numel();
  if (b.defined()) {
    for (int64_t i = 0; i < dim; ++i) outer *= like.size(i);
    channels = like.size(dim);
    inner = 1;
    for (int64_t i = dim + 1; i < like.dim(); ++i) inner *= like.size(i);
  }
  const bool use_b = b.defined() && needs_x;  // linear without clamp never reads x + b in modes 1, 2
  if (dtype == at::kFloat) {
    bias_act_launch(BiasActArgs<float>{
        y.data_ptr<float>(), has_x ? xc.data_ptr<float>() : nullptr, use_b ? b.data_ptr<float>() : nullptr,
        mode >= 1 ? g1c.data_ptr<float>() : nullptr, mode == 2 ? g2c.data_ptr<float>() : nullptr,
        use_b ? outer : 1, use_b ? channels : 1, use_b ? inner : like.numel(), int(act), int(mode),
        float(alpha), float(gain), float(clamp)});
  } else {
    bias_act_launch(BiasActArgs<double>{
        y.data_ptr<double>(), has_x ? xc.data_ptr<double>() : nullptr, use_b ? b.data_ptr<double>() : nullptr,
        mode >= 1 ? g1c.data_ptr<double>() : nullptr, mode == 2 ? g2c.data_ptr<double>() : nullptr,
        use_b ? outer : 1, use_b ? channels : 1, use_b ? inner : like.numel(), int(act), int(mode),
        alpha, gain, clamp});
  }
  return y;
}

// x: [N, C, H, W]; g: [fh, fw] correlation filter (already flipped and scaled), dtype of x.
at::Tensor upfirdn2d_cpu(const at::Tensor& x_in, const at::Tensor& g_in, int64_t upx, int64_t upy, int64_t downx,
                         int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x_in.device().is_cpu() && g_in.device().is_cpu(), "upfirdn2d_cpu: tensors must be on the CPU");
  TORCH_CHECK(x_in.dim() == 4, "upfirdn2d_cpu: x must be [N, C, H, W], got ", x_in.sizes());
  TORCH_CHECK(g_in.dim() == 2 && g_in.size(0) >= 1 && g_in.size(1) >= 1, "upfirdn2d_cpu: the filter must be 2D");
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "upfirdn2d_cpu: float32 or float64 only, got ", dtype);
  TORCH_CHECK(g_in.scalar_type() == dtype, "upfirdn2d_cpu: the filter must have the dtype of x");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d_cpu: up/down must be >= 1");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = g_in.contiguous();
  UpfirdnGeometry q{};
  q.planes = x.size(0) * x.size(1);
  q.h = x.size(2);
  q.w = x.size(3);
  q.fh = g.size(0);
  q.fw = g.size(1);
  q.upx = upx;
  q.upy = upy;
  q.downx = downx;
  q.downy = downy;
  q.px0 = px0;
  q.py0 = py0;
  TORCH_CHECK(q.h * upy + py0 + py1 >= q.fh && q.w * upx + px0 + px1 >= q.fw,
              "upfirdn2d_cpu: the padded input is smaller than the filter");
  q.out_h = stylemix::upfirdn_out_size(q.h, upy, downy, py0, py1, q.fh);
  q.out_w = stylemix::upfirdn_out_size(q.w, upx, downx, px0, px1, q.fw);
  if (q.planes == 0 || q.h == 0 || q.w == 0) return at::zeros({x.size(0), x.size(1), q.out_h, q.out_w}, x.options());
  at::Tensor y = at::empty({x.size(0), x.size(1), q.out_h, q.out_w}, x.options());
  const UpfirdnPlan plan = upfirdn2d_plan(q);
  const int64_t rows = q.planes * q.out_h;
  const int64_t work_per_row = std::max<int64_t>(1, q.out_w * q.fh * q.fw / (upx * upy));
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / work_per_row);
  if (dtype == at::kFloat) {
    const float *xp = x.data_ptr<float>(), *gp = g.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { upfirdn2d_rows(q, plan, xp, yp, gp, r0, r1); });
  } else {
    const double *xp = x.data_ptr<double>(), *gp = g.data_ptr<double>();
    double* yp = y.data_ptr<double>();
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { upfirdn2d_rows(q, plan, xp, yp, gp, r0, r1); });
  }
  return y;
}

// The per-pixel loop of the CUDA kernel (stylemix::upfirdn_pixel) run on the CPU, one output at a
// time: slow, for tests only (it checks the GPU kernel's index arithmetic on machines without one).
at::Tensor upfirdn2d_direct(const at::Tensor& x_in, const at::Tensor& g_in, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 4 && g_in.dim() == 2, "upfirdn2d_direct: bad arguments");
  TORCH_CHECK(x_in.scalar_type() == at::kDouble && g_in.scalar_type() == at::kDouble, "upfirdn2d_direct: float64 only");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = g_in.contiguous();
  const int64_t h = x.size(2), w = x.size(3), fh = g.size(0), fw = g.size(1);
  TORCH_CHECK(h * upy + py0 + py1 >= fh && w * upx + px0 + px1 >= fw, "upfirdn2d_direct: input smaller than filter");
  const int64_t out_h = stylemix::upfirdn_out_size(h, upy, downy, py0, py1, fh);
  const int64_t out_w = stylemix::upfirdn_out_size(w, upx, downx, px0, px1, fw);
  at::Tensor y = at::zeros({x.size(0), x.size(1), out_h, out_w}, x.options());
  const double* xp = x.data_ptr<double>();
  const double* gp = g.data_ptr<double>();
  double* yp = y.data_ptr<double>();
  const int64_t planes = x.size(0) * x.size(1);
  struct Identity {
    double operator()(double v) const { return v; }
  };
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t oy = 0; oy < out_h; ++oy) {
      for (int64_t ox = 0; ox < out_w; ++ox) {
        yp[(p * out_h + oy) * out_w + ox] = stylemix::upfirdn_pixel<double>(
            xp + p * h * w, gp, h, w, fh, fw, upx, upy, downx, downy, px0, py0, oy, ox, Identity());
      }
    }
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(STYLEMIX_NS, m) {
  m.def("bias_act(Tensor x, Tensor? b, Tensor g1, Tensor g2, int mode, int dim, int act, float alpha, "
        "float gain, float clamp) -> Tensor",
        &bias_act_cpu);
  m.def("upfirdn2d(Tensor x, Tensor g, int upx, int upy, int downx, int downy, int px0, int px1, int py0, "
        "int py1) -> Tensor",
        &upfirdn2d_cpu);
  m.def("upfirdn2d_direct(Tensor x, Tensor g, int upx, int upy, int downx, int downy, int px0, int px1, int py0, "
        "int py1) -> Tensor",
        &upfirdn2d_direct);
}
