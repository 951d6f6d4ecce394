// LLM.int8's int8 x int8 part (Dettmers et al., 2022) for the CPU in one call, built by kernels/cpp_ops.py.
//
// lowbit_cpu::int8_rows_linear(x, qweight, w_scale, bias, dtype) for x (rows, in) float32/bf16/fp16:
//   s_x[r]   = fp16(clamp(max_k |x[r, k]| / 127, fp16 tiny, fp16 max))     (core.affine.int8_absmax, saturate)
//   q[r, k]  = clamp(round_half_even(x[r, k] / s_x[r]), -127, 127)          held in bf16 (exact for |q| <= 127)
//   y[r, o]  = _weight_int8pack_mm(q, qweight, w_scale)[r, o] * s_x[r] + bias[o]  -> dtype
// the same arithmetic, in the same order and precision, as kernels/cpu.py's eager int8_cpu path
// (int8_absmax, _weight_int8pack_mm, then row scale and bias in float32), which it replaces with one call:
// at one row that path is about ten small ops whose dispatch costs as much as the matmul.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_weight_int8pack_mm.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace {

constexpr float kHalfTiny = 6.103515625e-05f;  // torch.finfo(torch.float16).tiny
constexpr float kHalfMax = 65504.0f;
constexpr int64_t kRowGrain = 16;  // rows per parallel task

// One row of `n` values -> bf16 codes; returns the fp16-rounded scale as float.
template <typename T>
float quantize_row(const T* x, c10::BFloat16* q, int64_t n) {
  float amax = 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    amax = std::max(amax, std::abs(static_cast<float>(x[k])));
  }
  const float scale = static_cast<float>(c10::Half(std::clamp(amax / 127.0f, kHalfTiny, kHalfMax)));
  for (int64_t k = 0; k < n; ++k) {
    const float code = std::nearbyint(static_cast<float>(x[k]) / scale);
    q[k] = c10::BFloat16(std::min(std::max(code, -127.0f), 127.0f));
  }
  return scale;
}

template <typename T>
void scale_rows(const c10::BFloat16* acc, const float* row_scale, const at::Tensor& bias, T* out, int64_t rows,
                int64_t cols) {
  at::Tensor bias_f = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();  // (cols,)
  const float* b = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t o = 0; o < cols; ++o) {
        float v = static_cast<float>(acc[r * cols + o]) * row_scale[r];
        out[r * cols + o] = static_cast<T>(b ? v + b[o] : v);
      }
    }
  });
}

at::Tensor int8_rows_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias, at::ScalarType dtype) {
  TORCH_CHECK(x.dim() == 2 && qweight.dim() == 2 && x.size(1) == qweight.size(1),
              "int8_rows_linear: x (rows, in) and qweight (out, in) expected");
  TORCH_CHECK(qweight.scalar_type() == at::kChar && w_scale.scalar_type() == at::kBFloat16,
              "int8_rows_linear: int8 qweight and bf16 w_scale expected");
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.size(0), in = xc.size(1), out = qweight.size(0);
  at::Tensor codes = at::empty({rows, in}, xc.options().dtype(at::kBFloat16));  // (rows, in)
  at::Tensor row_scale = at::empty({rows}, xc.options().dtype(at::kFloat));     // (rows,)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "int8_rows_quantize", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    c10::BFloat16* qp = codes.mutable_data_ptr<c10::BFloat16>();
    float* sp = row_scale.mutable_data_ptr<float>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) sp[r] = quantize_row(xp + r * in, qp + r * in, in);
    });
  });
  const at::Tensor acc = at::_weight_int8pack_mm(codes, qweight, w_scale).contiguous();  // (rows, out) bf16
  at::Tensor y = at::empty({rows, out}, xc.options().dtype(dtype));                       // (rows, out)
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "int8_rows_scale", [&] {
    scale_rows(acc.const_data_ptr<c10::BFloat16>(), row_scale.const_data_ptr<float>(), b,
               y.mutable_data_ptr<scalar_t>(), rows, out);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(lowbit_cpu, m) {
  m.def("int8_rows_linear(Tensor x, Tensor qweight, Tensor w_scale, Tensor? bias, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowbit_cpu, CPU, m) { m.impl("int8_rows_linear", &int8_rows_linear); }
