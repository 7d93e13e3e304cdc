// Row-invariant attention for CPUs with AVX2: the output of a query row depends only on that row's query and the
// keys/values it may see, in slot order. Masked keys are skipped (not added as zeros), the dot products, the
// softmax sum and the value sum run in a fixed order fixed by D alone, and a row never reads another row. So a
// block of T queries (a verification chain, a token tree with masked siblings) computes, per row, exactly what
// one-token decoding computes for that row: lossless speculation at any block size, in fp32, without float64.
//   q (B, H, T, D), k/v (B, Hkv, S, D) with unit stride in D (any other strides), mask (B, T, S) uint8 or empty.
//   Returns (B, T, H, D) contiguous.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <vector>

namespace {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// dot of two D-vectors (D % 32 == 0): 4 accumulators over k = 32i + 8j, summed in a fixed tree.
inline float dot(const float* a, const float* b, int64_t D) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  for (int64_t i = 0; i < D; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void one_row(const float* q, const float* k, const float* v, int64_t ks, int64_t vs, const uint8_t* m, int64_t S,
             int64_t D, float scale, float* out, std::vector<float>& p, std::vector<int32_t>& idx) {
  p.clear();
  idx.clear();
  float mx = -INFINITY;
  for (int64_t j = 0; j < S; ++j) {
    if (m && !m[j]) continue;
    const float s = dot(q, k + j * ks, D) * scale;
    p.push_back(s);
    idx.push_back(static_cast<int32_t>(j));
    mx = s > mx ? s : mx;
  }
  for (int64_t d = 0; d < D; ++d) out[d] = 0.0f;
  if (p.empty()) return;
  float sum = 0.0f;
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = std::exp(p[i] - mx);
    sum += p[i];
  }
  for (int64_t d = 0; d < D; d += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (size_t i = 0; i < p.size(); ++i)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(p[i]), _mm256_loadu_ps(v + idx[i] * vs + d), acc);
    _mm256_storeu_ps(out + d, _mm256_div_ps(acc, _mm256_set1_ps(sum)));
  }
}

at::Tensor row_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                         double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-d");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "row_attention takes float32 tensors");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(D % 32 == 0, "head_dim must be a multiple of 32");
  TORCH_CHECK(H % Hkv == 0 && k.size(0) == B && v.size(2) == S && k.size(3) == D, "shape mismatch");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "k and v need unit stride along head_dim");
  const bool has_mask = mask.numel() > 0;
  if (has_mask) {
    TORCH_CHECK(mask.scalar_type() == at::kByte && mask.is_contiguous(), "mask must be contiguous uint8");
    TORCH_CHECK(mask.size(0) == B && mask.size(1) == T && mask.size(2) == S, "mask must be (B, T, S)");
  }
  TORCH_CHECK(q.stride(3) == 1, "q needs unit stride along head_dim");
  at::Tensor out = at::empty({B, T, H, D}, q.options());  // (B, T, H, D): o_proj reads it without a copy
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const uint8_t* mp = has_mask ? mask.data_ptr<uint8_t>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t G = H / Hkv, rows = B * H * T;
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<float> p;
    std::vector<int32_t> idx;
    p.reserve(S);
    idx.reserve(S);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T, h = (r / T) % H, b = r / (T * H), g = h / G;
      one_row(qp + b * q.stride(0) + h * q.stride(1) + t * q.stride(2), kp + b * k.stride(0) + g * k.stride(1), vp + b * v.stride(0) + g * v.stride(1),
              k.stride(2), v.stride(2), mp ? mp + (b * T + t) * S : nullptr, S, D, static_cast<float>(scale),
              op + ((b * T + t) * H + h) * D, p, idx);
    }
  };
  // each row is computed whole by one thread, so the split never changes a result
  if (rows * S * D < (1 << 18)) {
    work(0, rows);
  } else {
    at::parallel_for(0, rows, 1, work);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(leaninfer_attn, m) {
  m.def("row_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(leaninfer_attn, CPU, m) { m.impl("row_attention", &row_attention); }
