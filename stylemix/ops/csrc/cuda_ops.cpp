// Torch binding of the CUDA kernels: argument checks, output allocation, device guard, the current
// stream, and op registration in STYLEMIX_NS (stylemix_cuda_<hash>, set by the build).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "bias_act_math.h"
#include "cuda_launchers.h"
#include "upfirdn2d_index.h"

#ifndef STYLEMIX_NS
#define STYLEMIX_NS stylemix_cuda
#endif

namespace {

using stylemix::cuda::DType;

DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kHalf;
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    default: break;
  }
  TORCH_CHECK(false, op, ": float16, float32 or float64 only, got ", t.scalar_type());
  return DType::kFloat;  // not reached
}

void check_launch(int err, const char* op) {
  TORCH_CHECK(err != -1, op, ": unsupported arguments");
  TORCH_CHECK(err == 0, op, ": CUDA error: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void check_same(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == like.scalar_type(), "bias_act: ", what,
              " must have the device and dtype of x");
  TORCH_CHECK(t.sizes() == like.sizes(), "bias_act: ", what, " has shape ", t.sizes(), ", expected ", like.sizes());
}

// Same contract as the CPU op (ops_cpu.cpp).
at::Tensor bias_act_cuda(const at::Tensor& x, const std::optional<at::Tensor>& b_opt, const at::Tensor& g1,
                         const at::Tensor& g2, int64_t mode, int64_t dim, int64_t act, double alpha, double gain,
                         double clamp) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act_cuda: mode must be 0, 1 or 2");
  const at::Tensor& like = mode == 0 ? x : g1;
  TORCH_CHECK(like.is_cuda(), "bias_act_cuda: tensors must be on a CUDA device");
  const DType dtype = dtype_of(like, "bias_act_cuda");
  const bool has_x = mode == 0 || (x.defined() && x.numel() == like.numel() && x.dim() == like.dim());
  const bool needs_x = mode == 0 || clamp >= 0 || act != stylemix::kLinear;
  TORCH_CHECK(has_x || !needs_x, "bias_act_cuda: x is required for this activation / clamp");
  const at::Tensor xc = has_x ? x.contiguous() : at::Tensor();
  if (has_x) check_same(xc, like, "x");
  const at::Tensor g1c = mode >= 1 ? g1.contiguous() : at::Tensor();
  const at::Tensor g2c = mode == 2 ? g2.contiguous() : at::Tensor();
  if (mode == 2) check_same(g2c, like, "dy");
  at::Tensor b;
  if (b_opt.has_value() && b_opt->defined()) {
    b = b_opt->contiguous();
    TORCH_CHECK(b.dim() == 1 && b.scalar_type() == like.scalar_type() && b.device() == like.device(),
                "bias_act_cuda: b must be a 1D tensor with the dtype and device of x");
    TORCH_CHECK(dim >= 0 && dim < like.dim(), "bias_act_cuda: dim ", dim, " out of range");
    TORCH_CHECK(b.size(0) == like.size(dim), "bias_act_cuda: b has ", b.size(0), " elements, x has ",
                like.size(dim), " along dim ", dim);
  }
  const c10::cuda::CUDAGuard guard(like.device());
  at::Tensor y = at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  if (like.numel() == 0) return y;
  int64_t channels = 1, inner = 1;
  const bool use_b = b.defined() && needs_x;
  if (use_b) {
    channels = like.size(dim);
    for (int64_t i = dim + 1; i < like.dim(); ++i) inner *= like.size(i);
  }
  stylemix::cuda::BiasActArgs a{};
  a.y = y.data_ptr();
  a.x = has_x ? xc.data_ptr() : nullptr;
  a.b = use_b ? b.data_ptr() : nullptr;
  a.g1 = mode >= 1 ? g1c.data_ptr() : nullptr;
  a.g2 = mode == 2 ? g2c.data_ptr() : nullptr;
  a.numel = like.numel();
  a.channels = channels;
  a.inner = inner;
  a.act = int(act);
  a.mode = int(mode);
  a.alpha = alpha;
  a.gain = gain;
  a.clamp = clamp;
  a.dtype = dtype;
  check_launch(stylemix::cuda::bias_act_launch(a, c10::cuda::getCurrentCUDAStream().stream()), "bias_act_cuda");
  return y;
}

// x: [N, C, H, W]; g: [fh, fw] correlation filter, float32 (float64 for float64 x).
at::Tensor upfirdn2d_cuda(const at::Tensor& x_in, const at::Tensor& g_in, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x_in.is_cuda() && g_in.device() == x_in.device(), "upfirdn2d_cuda: tensors must be on one CUDA device");
  TORCH_CHECK(x_in.dim() == 4, "upfirdn2d_cuda: x must be [N, C, H, W], got ", x_in.sizes());
  TORCH_CHECK(g_in.dim() == 2 && g_in.size(0) >= 1 && g_in.size(1) >= 1, "upfirdn2d_cuda: the filter must be 2D");
  const DType dtype = dtype_of(x_in, "upfirdn2d_cuda");
  TORCH_CHECK(g_in.scalar_type() == (dtype == DType::kDouble ? at::kDouble : at::kFloat),
              "upfirdn2d_cuda: the filter must be float32 (float64 for float64 x)");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d_cuda: up/down must be >= 1");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = g_in.contiguous();
  const int64_t h = x.size(2), w = x.size(3), fh = g.size(0), fw = g.size(1);
  TORCH_CHECK(h * upy + py0 + py1 >= fh && w * upx + px0 + px1 >= fw,
              "upfirdn2d_cuda: the padded input is smaller than the filter");
  const int64_t out_h = stylemix::upfirdn_out_size(h, upy, downy, py0, py1, fh);
  const int64_t out_w = stylemix::upfirdn_out_size(w, upx, downx, px0, px1, fw);
  if (x.numel() == 0) return at::zeros({x.size(0), x.size(1), out_h, out_w}, x.options());
  at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  stylemix::cuda::UpfirdnArgs a{};
  a.x = x.data_ptr();
  a.y = y.data_ptr();
  a.g = g.data_ptr();
  a.planes = x.size(0) * x.size(1);
  a.h = h;
  a.w = w;
  a.out_h = out_h;
  a.out_w = out_w;
  a.fh = fh;
  a.fw = fw;
  a.upx = upx;
  a.upy = upy;
  a.downx = downx;
  a.downy = downy;
  a.px0 = px0;
  a.py0 = py0;
  a.dtype = dtype;
  check_launch(stylemix::cuda::upfirdn2d_launch(a, c10::cuda::getCurrentCUDAStream().stream()), "upfirdn2d_cuda");
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(STYLEMIX_NS, m) {
  m.def("bias_act(Tensor x, Tensor? b, Tensor g1, Tensor g2, int mode, int dim, int act, float alpha, "
        "float gain, float clamp) -> Tensor",
        &bias_act_cuda);
  m.def("upfirdn2d(Tensor x, Tensor g, int upx, int upy, int downx, int downy, int px0, int px1, int py0, "
        "int py1) -> Tensor",
        &upfirdn2d_cuda);
}
