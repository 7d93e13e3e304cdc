// W8A8 block matmul for CPUs with AVX2 (no VNNI needed): int8 weights in blocks of 32 along K with one fp16
// scale per block (the Q8_0 grid of GGUF), int8 activations with one fp32 scale per 32-block (llama.cpp's
// Q8_0 activation layout), int32 dot per block, then one fixed fp32 epilogue per (row, output, block):
//     acc = acc + float(isum) * (w_scale * x_scale)        (mul, mul, add; never fused, never reordered)
// Every (row, output) is computed by one thread with an instruction sequence fixed by K alone, and a row never
// reads another row, so the result of a row is bit-identical for any number of rows M, any grouping of rows,
// any thread count and any split of the outputs: speculative verification is exact by construction.
//
// Weight layout (packed once at load): tiles of 8 outputs; per tile and 32-block, 8 chunks of 32 bytes, chunk c
// holding k = 4c..4c+3 of the 8 outputs as [output][4]. One `maddubs` then multiplies 4 k of 8 outputs at once
// against 4 activation bytes broadcast to every lane, and each output keeps its own int32 lane (no horizontal
// sums). Signed x signed is done as |w| (u8) x sign(w)*x (s8) (llama.cpp's sign transfer; x never reaches -128).
//   w: int8 (N/8, K/32, 256)     scales: fp16 bits as int16 (N/8, K/32, 8)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <atomic>
#include <cstdint>

namespace {

constexpr int64_t kTile = 8;   // outputs per tile
constexpr int64_t kBlock = 32;  // K per scale block

// x (M, K) fp32 -> q (M, K) int8, d (M, K/32) fp32 with d = amax/127 and q = round_half_even(x * (127/amax)).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* d) {
  const int64_t nb = K / kBlock;
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + m * K + b * kBlock;
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(xb + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[i]));
      }
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      const float a = _mm_cvtss_f32(h);
      d[m * nb + b] = a / 127.0f;
      const __m256 id = _mm256_set1_ps(a > 0.0f ? 127.0f / a : 0.0f);
      __m256i i32[4];
      for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));  // RNE rounding
      __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]);
      __m256i i16b = _mm256_packs_epi32(i32[2], i32[3]);
      __m256i i8 = _mm256_packs_epi16(i16a, i16b);
      // packs interleave 128-bit lanes: restore element order 0..31
      i8 = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + m * K + b * kBlock), i8);
    }
  }
}

// Rows [r0, r0 + R) of one tile t: R <= 4 accumulators live in registers.
template <int R>
inline void tile_rows(const int8_t* w, const uint16_t* s, const int8_t* xq, const float* xd, int64_t K, int64_t t,
                      int64_t r0, int64_t N, float* y) {
  const int64_t nb = K / kBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int8_t* wt = w + t * nb * 256;
  const uint16_t* st = s + t * nb * kTile;
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* wb = wt + b * 256;
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 32 * c));
      const __m256i aw = _mm256_abs_epi8(wv);
      for (int r = 0; r < R; ++r) {
        int32_t x4;
        __builtin_memcpy(&x4, xq + (r0 + r) * K + b * kBlock + 4 * c, 4);
        const __m256i xs = _mm256_sign_epi8(_mm256_set1_epi32(x4), wv);
        const __m256i p16 = _mm256_maddubs_epi16(aw, xs);
        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p16, ones));
      }
    }
    const __m256 ws = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(st + b * kTile)));
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_mul_ps(ws, _mm256_set1_ps(xd[(r0 + r) * nb + b]));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(isum[r]), scale));
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + (r0 + r) * N + t * kTile, acc[r]);
}

void tile_all_rows(const int8_t* w, const uint16_t* s, const int8_t* xq, const float* xd, int64_t M, int64_t K,
                   int64_t t, int64_t N, float* y) {
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) tile_rows<4>(w, s, xq, xd, K, t, r, N, y);
  switch (M - r) {
    case 3: tile_rows<3>(w, s, xq, xd, K, t, r, N, y); break;
    case 2: tile_rows<2>(w, s, xq, xd, K, t, r, N, y); break;
    case 1: tile_rows<1>(w, s, xq, xd, K, t, r, N, y); break;
    default: break;
  }
}

at::Tensor q8_matmul(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, int64_t n_threads) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (M, K) float32");
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kChar && w.size(2) == 256, "w must be (N/8, K/32, 256) int8");
  TORCH_CHECK(s.dim() == 3 && s.scalar_type() == at::kShort && s.size(2) == kTile, "s must be (N/8, K/32, 8) int16");
  const int64_t M = x.size(0), K = x.size(1), tiles = w.size(0), nb = w.size(1), N = tiles * kTile;
  TORCH_CHECK(K == nb * kBlock, "x has K=", K, " but the weight has ", nb, " blocks of 32");
  TORCH_CHECK(s.size(0) == tiles && s.size(1) == nb, "scale shape does not match the weight");
  TORCH_CHECK(w.is_contiguous() && s.is_contiguous(), "packed weight and scales must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 32 == 0, "packed weight must be 32-byte aligned");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  at::Tensor xq = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor xd = at::empty({M, nb}, x.options());
  quantize_rows(xc.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), xd.data_ptr<float>());
  const int8_t* wp = w.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(s.data_ptr<int16_t>());
  const int8_t* qp = xq.data_ptr<int8_t>();
  const float* dp = xd.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Dynamic schedule (an atomic chunk counter, as llama.cpp): a thread slowed by another process does less work.
  const int64_t threads = n_threads > 0 ? n_threads : at::get_num_threads();
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(32, tiles / (8 * std::max<int64_t>(threads, 1))));
  const int64_t n_chunks = (tiles + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) {
      const int64_t t1 = std::min(tiles, (c + 1) * chunk);
      for (int64_t t = c * chunk; t < t1; ++t) tile_all_rows(wp, sp, qp, dp, M, K, t, N, yp);
    }
  };
  if (threads <= 1 || n_chunks == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, threads, 1, work);
  }
  return y;
}

// Quantise activations exactly as q8_matmul does (for the reference path and tests).
std::tuple<at::Tensor, at::Tensor> q8_quantize(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.size(1) % kBlock == 0, "x must be (M, 32j) fp32");
  const at::Tensor xc = x.contiguous();
  at::Tensor q = at::empty(xc.sizes(), xc.options().dtype(at::kChar));
  at::Tensor d = at::empty({xc.size(0), xc.size(1) / kBlock}, xc.options());
  quantize_rows(xc.data_ptr<float>(), xc.size(0), xc.size(1), q.data_ptr<int8_t>(), d.data_ptr<float>());
  return {q, d};
}

}  // namespace

TORCH_LIBRARY(leaninfer_q8, m) {
  m.def("q8_matmul(Tensor x, Tensor w, Tensor s, int n_threads=0) -> Tensor");
  m.def("q8_quantize(Tensor x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(leaninfer_q8, CPU, m) {
  m.impl("q8_matmul", &q8_matmul);
  m.impl("q8_quantize", &q8_quantize);
}
