// Fused row-wise ops for the decode step (AVX2): RMSNorm, and the q/k preparation after the fused QKV matmul
// (per-head RMSNorm + rotate-half RoPE). Each row is computed by one fixed instruction sequence that depends on
// the row length alone, so results are independent of how many rows run together (row-invariant).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>

namespace {

inline float sumsq(const float* x, int64_t D) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= D; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    s0 = _mm256_fmadd_ps(a, a, s0);
    s1 = _mm256_fmadd_ps(b, b, s1);
  }
  __m256 s = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  for (; i < D; ++i) r += x[i] * x[i];
  return r;
}

// y = x / sqrt(mean(x^2) + eps) * (offset + w), one row of length D.
inline void norm_row(const float* x, const float* w, float offset, float eps, int64_t D, float* y) {
  const float r = 1.0f / std::sqrt(sumsq(x, D) / static_cast<float>(D) + eps);
  for (int64_t i = 0; i < D; ++i) y[i] = (x[i] * r) * (offset + w[i]);
}

// x (..., D) contiguous rows; returns y, or residual + y when residual is given.
at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, double offset, double eps,
                   const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "rmsnorm takes float32");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
  TORCH_CHECK(wc.numel() == D, "weight size ", wc.numel(), " != ", D);
  at::Tensor y = at::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float off = static_cast<float>(offset), ep = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) norm_row(xp + r * D, wp, off, ep, D, yp + r * D);
  if (residual.has_value()) {
    const at::Tensor rc = residual->contiguous();
    TORCH_CHECK(rc.numel() == y.numel() && rc.scalar_type() == at::kFloat, "residual must match x");
    const float* rp = rc.data_ptr<float>();
    for (int64_t i = 0; i < y.numel(); ++i) yp[i] = rp[i] + yp[i];
  }
  return y;
}

// qkv (M, (H + 2 Hkv) D) -> q (M, H, D), k (M, Hkv, D), v (M, Hkv, D): per-head RMSNorm on q and k when
// weights are given, then rotate-half RoPE with cos/sin (M, D).
std::tuple<at::Tensor, at::Tensor, at::Tensor> qk_prep(const at::Tensor& qkv, int64_t H, int64_t Hkv,
                                                       const at::Tensor& qw, const at::Tensor& kw, double offset,
                                                       double eps, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kFloat, "qkv must be (M, (H+2Hkv)D) float32");
  const int64_t M = qkv.size(0), D = qkv.size(1) / (H + 2 * Hkv), half = D / 2;
  TORCH_CHECK(qkv.size(1) == (H + 2 * Hkv) * D, "qkv width does not match the head counts");
  TORCH_CHECK(cos.size(0) == M && cos.size(1) == D && sin.sizes() == cos.sizes(), "cos/sin must be (M, D)");
  const bool norm = qw.numel() > 0;
  const at::Tensor x = qkv.contiguous(), c = cos.contiguous().to(at::kFloat), s = sin.contiguous().to(at::kFloat);
  at::Tensor q = at::empty({M, H, D}, x.options()), k = at::empty({M, Hkv, D}, x.options());
  at::Tensor v = x.narrow(1, (H + Hkv) * D, Hkv * D).reshape({M, Hkv, D}).contiguous();
  const float* xp = x.data_ptr<float>();
  const float *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  const float* qwp = norm ? qw.data_ptr<float>() : nullptr;
  const float* kwp = norm ? kw.data_ptr<float>() : nullptr;
  const float off = static_cast<float>(offset), ep = static_cast<float>(eps);
  std::vector<float> tmp(D);
  for (int64_t m = 0; m < M; ++m) {
    const float* row = xp + m * (H + 2 * Hkv) * D;
    for (int64_t h = 0; h < H + Hkv; ++h) {
      const bool is_q = h < H;
      const float* src = row + h * D;
      float* dst = is_q ? q.data_ptr<float>() + (m * H + h) * D : k.data_ptr<float>() + (m * Hkv + h - H) * D;
      if (norm) {
        norm_row(src, is_q ? qwp : kwp, off, ep, D, tmp.data());
        src = tmp.data();
      }
      const float* cr = cp + m * D;
      const float* sr = sp + m * D;
      for (int64_t i = 0; i < half; ++i) {
        dst[i] = src[i] * cr[i] + (-src[i + half]) * sr[i];
        dst[i + half] = src[i + half] * cr[i + half] + src[i] * sr[i + half];
      }
    }
  }
  return {q, k, v};
}

}  // namespace

TORCH_LIBRARY(leaninfer_fused, m) {
  m.def("rmsnorm(Tensor x, Tensor w, float offset, float eps, Tensor? residual=None) -> Tensor");
  m.def("qk_prep(Tensor qkv, int H, int Hkv, Tensor qw, Tensor kw, float offset, float eps, Tensor cos, "
        "Tensor sin) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(leaninfer_fused, CPU, m) {
  m.impl("rmsnorm", &rmsnorm);
  m.impl("qk_prep", &qk_prep);
}
