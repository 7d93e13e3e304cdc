"""W8A8 block kernels: int8 weights on the Q8_0 grid (one fp16 scale per 32 weights along K), int8 activations
with one fp32 scale per 32-block, int32 dots, one fixed fp32 epilogue (see q8.cpp).

`q8_matmul(x, w, s)`, `row_attention(...)` and the fused ops run the C++ AVX2 kernels when they build here
(once, with the system compiler through `torch.utils.cpp_extension`, cached under the user cache). Otherwise
`q8_matmul` runs the PyTorch reference `q8_matmul_reference` (the same arithmetic op for op: bit-identical), and
attention, norms and RoPE run their PyTorch paths.
`LEANINFER_KERNELS=reference` forces the reference; `LEANINFER_KERNELS_DIR` moves the build folder.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TILE, BLOCK = 8, 32
_lock = threading.Lock()
_state: dict[str, object] = {}


def cpu_supports_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return {"avx2", "fma", "f16c"} <= set(flags)


def native_available() -> bool:
    """Build (once per process; the build itself is cached on disk) and load the C++ kernels."""
    with _lock:
        if "native" in _state:
            return bool(_state["native"])
        _state["native"] = False
        if os.environ.get("LEANINFER_KERNELS", "") == "reference":
            _state["note"] = "LEANINFER_KERNELS=reference"
        elif not cpu_supports_avx2():
            _state["note"] = "this CPU lacks AVX2/FMA/F16C: using the PyTorch reference kernel"
        else:
            try:
                _build()
                _state["native"] = True
            except Exception as e:  # no compiler, no headers, ...: fall back with a clear note
                _state["note"] = f"C++ kernel build failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); " \
                                 "using the PyTorch reference kernel (same results, slower)"
        if not _state["native"]:
            log.warning("leaninfer kernels: %s", _state["note"])
        return bool(_state["native"])


def kernel_note() -> str:
    native_available()
    return "native AVX2" if _state["native"] else f"reference ({_state.get('note', '')})"


SOURCES = ("q8.cpp", "attention.cpp", "fused.cpp")
# -fopenmp makes at::parallel_for (an inline OpenMP template) parallel inside the extension: without it the
# pragma compiles away and every kernel ran on one thread. The library links libgomp.so.1, the soname torch
# ships, so the loader reuses torch's OpenMP runtime (one thread pool).
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fno-fast-math", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def kernels_root() -> Path:
    """Where builds live: `LEANINFER_KERNELS_DIR` when set, else the user cache's `kernels/`."""
    from leaninfer.paths import cache_dir

    root = os.environ.get("LEANINFER_KERNELS_DIR")
    return Path(root) if root else cache_dir("kernels", create=False)


def build_dir() -> Path:
    """The build folder under `kernels_root()`, keyed on the sources' content and flags (two checkouts never
    rebuild each other's)."""
    import hashlib

    here = Path(__file__).parent
    flags = " ".join(CFLAGS + LDFLAGS).encode()
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in SOURCES) + flags).hexdigest()[:12]
    path = kernels_root() / f"torch-{torch.__version__.split('+')[0]}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build() -> None:
    from torch.utils.cpp_extension import load

    from leaninfer.io.cachefs import file_lock

    build = build_dir()
    # Our lock is a kernel flock, released when its process dies. torch's own baton (a `lock` file it creates
    # and deletes) outlives a killed build and would make every later build wait forever: holding our lock,
    # nobody else is building, so a baton found now is stale.
    with file_lock(build):
        (build / "lock").unlink(missing_ok=True)
        load(
            name="leaninfer_kernels",
            sources=[str(Path(__file__).parent / name) for name in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )


def pack_q8(q: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack int8 codes q (N, K) and fp16 block scales d (N, K/32) into the kernel layout.

    Returns w int8 (N/8, K/32, 256) with chunk c of a block holding k = 4c..4c+3 of the tile's 8 outputs as
    [output][4], and s int16 (N/8, K/32, 8) (fp16 bits)."""
    N, K = q.shape
    if N % TILE or K % BLOCK:
        raise ValueError(f"q8 weights need N % {TILE} == 0 and K % {BLOCK} == 0, got {N}x{K}")
    nb = K // BLOCK
    w = q.reshape(N // TILE, TILE, nb, 8, 4).permute(0, 2, 3, 1, 4).reshape(N // TILE, nb, 256)
    s = d.to(torch.float16).reshape(N // TILE, TILE, nb).permute(0, 2, 1).contiguous().view(torch.int16)
    return _aligned(w), s


def unpack_q8(w: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_q8`: (q int8 (N, K), d fp16 (N, K/32))."""
    T, nb, _ = w.shape
    q = w.reshape(T, nb, 8, TILE, 4).permute(0, 3, 1, 2, 4).reshape(T * TILE, nb * BLOCK)
    d = s.view(torch.float16).permute(0, 2, 1).reshape(T * TILE, nb)
    return q, d


def quantize_weight_q8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 weights: per 32-block d = fp16(amax / 127), q = round(w / d) clipped to [-127, 127].

    A GGUF Q8_0 tensor dequantised to fp32 comes back on its own grid (same codes, same scales)."""
    N, K = weight.shape
    wb = weight.detach().float().reshape(N, K // BLOCK, BLOCK)
    d = (wb.abs().amax(-1) / 127.0).to(torch.float16)
    inv = torch.where(d > 0, 1.0 / d.float(), torch.zeros_like(d, dtype=torch.float32))
    q = torch.round(wb * inv[..., None]).clamp(-127, 127).to(torch.int8).reshape(N, K)
    return q, d


def quantize_activations_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) fp32 -> (q int8 (M, K), d fp32 (M, K/32)), the same ops as the C++ `quantize_rows`."""
    M, K = x.shape
    xb = x.reshape(M, K // BLOCK, BLOCK)
    amax = xb.abs().amax(-1)
    c127 = torch.full_like(amax, 127.0)  # tensor / tensor: true IEEE division (scalar forms may use reciprocals)
    d = amax / c127
    inv = torch.where(amax > 0, c127 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv[..., None]).to(torch.int8).reshape(M, K)
    return q, d


def q8_matmul_reference(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch twin of the C++ kernel: exact int32 block dots, then acc = acc + isum * (ws * xd) per block
    in block order. x (M, K) fp32; w, s packed by `pack_q8`. Returns (M, N) fp32."""
    q, d = unpack_q8(w, s)
    N, K = q.shape
    nb = K // BLOCK
    xq, xd = quantize_activations_reference(x.float().contiguous())
    M = x.shape[0]
    # int32 dots per block (exact: |sum| <= 32 * 127 * 127), computed in float64 (exact below 2**53)
    isum = torch.einsum("mbk,nbk->mnb", xq.reshape(M, nb, BLOCK).double(), q.reshape(N, nb, BLOCK).double())
    isum = isum.float()  # exact: |isum| < 2**24
    ws = d.float()  # (N, nb)
    acc = torch.zeros(M, N)
    for b in range(nb):
        acc = acc + isum[:, :, b] * (ws[None, :, b] * xd[:, None, b])
    return acc


def q8_matmul(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, n_threads: int = 0) -> torch.Tensor:
    """y = x @ W.T for packed Q8_0 weights: x (M, K) fp32 -> (M, N) fp32, row-invariant for any M."""
    if x.device.type == "cpu" and native_available():
        return torch.ops.leaninfer_q8.q8_matmul(x, w, s, n_threads)
    return q8_matmul_reference(x, w, s).to(x.device)


def row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                  scale: float) -> torch.Tensor | None:
    """Row-invariant fp32 attention (attention.cpp) for any number of queries; None when the native kernel does
    not apply (no build, not CPU/fp32, head_dim not a multiple of 32), so the caller falls back.

    q (B, H, T, D); k, v (B, Hkv, S, D) with unit stride in D; mask (B, 1, T, S) bool or None."""
    if not (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32 and q.shape[-1] % 32 == 0):
        return None
    if k.stride(-1) != 1 or v.stride(-1) != 1 or not native_available():
        return None
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    m = torch.empty(0, dtype=torch.uint8) if mask is None else mask[:, 0].contiguous().view(torch.uint8)
    return torch.ops.leaninfer_attn.row_attention(q, k, v, m, float(scale)).transpose(1, 2)  # (B, H, T, D) view


def _fusable(*tensors: torch.Tensor) -> bool:
    """The fused C++ ops apply: CPU fp32 tensors, no autograd, kernels built."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return native_available()


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, offset: float, eps: float,
            residual: torch.Tensor | None = None) -> torch.Tensor | None:
    """Fused RMSNorm over the last dim, `x / rms(x) * (offset + weight)` (+ `residual`); None when not applicable."""
    if not _fusable(x, weight):
        return None
    return torch.ops.leaninfer_fused.rmsnorm(x, weight, float(offset), float(eps), residual)


def qk_prep(qkv: torch.Tensor, n_heads: int, n_kv: int, q_norm, k_norm, cos: torch.Tensor, sin: torch.Tensor):
    """Split a fused QKV output (B, T, (H + 2 Hkv) D), apply per-head RMSNorm to q and k (norm modules or None)
    and RoPE (cos/sin (B, T, D)); returns q (B, T, H, D), k and v (B, T, Hkv, D), or None when not applicable."""
    if not _fusable(qkv, cos, sin):
        return None
    B, T, W = qkv.shape
    D = W // (n_heads + 2 * n_kv)
    empty = torch.empty(0)
    qw = q_norm.weight if q_norm is not None else empty
    kw = k_norm.weight if k_norm is not None else empty
    offset = q_norm.offset if q_norm is not None else 0.0
    eps = q_norm.eps if q_norm is not None else 0.0
    q, k, v = torch.ops.leaninfer_fused.qk_prep(qkv.reshape(B * T, W), n_heads, n_kv, qw.float(), kw.float(),
                                                 float(offset), float(eps), cos.reshape(B * T, D),
                                                 sin.reshape(B * T, D))
    return q.view(B, T, n_heads, D), k.view(B, T, n_kv, D), v.view(B, T, n_kv, D)


def _aligned(t: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """A contiguous copy of `t` whose data starts on an `alignment`-byte boundary (the kernel uses aligned loads)."""
    t = t.contiguous()
    if t.data_ptr() % alignment == 0:
        return t
    raw = torch.empty(t.numel() * t.element_size() + alignment, dtype=torch.uint8)
    off = (-raw.data_ptr()) % alignment
    out = raw[off : off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out
