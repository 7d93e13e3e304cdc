"""Frame-by-frame ASD: push one face crop and the four mel frames of each video frame, get delayed scores.

The band transformer keeps, per layer, a preallocated key/value window of (past + future + 1) frames and a
queue of the frames whose future has not fully arrived. Frame m of a layer with reach (p, f) is computed as
soon as frame m + f has entered that layer; only one layer has f = F (see attention.py), so the score of
frame t comes out when frame t + F has been pushed: the delay is exactly F frames. With past = None the
window grows without bound (memory grows with the stream); with finite past it never grows.

`profile=True` times each section (encoders, projections, attention, FFN, cache writes) with perf_counter.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from leaninfer.streaming.asd.models import ASDModel, Backend, CausalConv1d, Front


class _Timers:
    def __init__(self, enabled: bool):
        self.enabled, self.seconds = enabled, defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        t0 = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - t0


class ConvState:
    """Left context of a CausalConv1d: the last k-1 input columns (zeros at the start, like the offline pad)."""

    def __init__(self, conv: CausalConv1d):
        self.conv = conv
        self.buf = torch.zeros(conv.in_channels, conv.kernel_size[0] - 1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x (C_in, n) new columns -> (C_out, n) outputs."""
        full = torch.cat([self.buf, x], dim=1)
        self.buf = full[:, full.shape[1] - self.buf.shape[1] :]
        return F.conv1d(full[None], self.conv.weight, self.conv.bias)[0]

    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()


class StreamingFront:
    """Per-frame encoders with causal-conv state. step(face (S, S), mel (4, M)) -> (Da + Dv,)."""

    def __init__(self, front: Front, timers: _Timers):
        self.front, self.t = front, timers
        self.v_state = ConvState(front.visual.temporal)
        self.a_conv = ConvState(front.audio.conv)
        self.a_state = ConvState(front.audio.temporal)

    def step(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        with self.t("visual_cnn"):
            v = self.front.visual.frame(face[None])  # (1, C)
            v = F.relu(self.v_state.step(v.T))[:, 0]  # (Dv,)
        with self.t("audio_enc"):
            au = self.front.audio
            x = au.norm(mel.T[None])[0]  # (M, 4)
            x = F.relu(self.a_conv.step(x))  # (H, 4)
            x = F.relu(F.conv1d(x[None], au.pool.weight, au.pool.bias, stride=au.m))[0]  # (H, 1)
            a = F.relu(self.a_state.step(x))[:, 0]  # (Da,)
        return torch.cat([a, v])

    def nbytes(self) -> int:
        return self.v_state.nbytes() + self.a_conv.nbytes() + self.a_state.nbytes()


class KVWindow:
    """Preallocated per-layer key/value store. capacity None = unbounded (doubles when full).

    append(k (H, Dh), v (H, Dh), pos) writes in a ring; view() -> k (H, W, Dh), v (H, W, Dh), pos (W,) in
    slot order (attention does not depend on the order because positions carry the offsets)."""

    def __init__(self, heads: int, head_dim: int, capacity: int | None, initial: int = 64):
        self.bounded = capacity is not None
        cap = capacity if capacity is not None else initial
        self.k = torch.zeros(heads, cap, head_dim)
        self.v = torch.zeros(heads, cap, head_dim)
        self.pos = torch.full((cap,), -(2**62), dtype=torch.long)
        self.count = 0

    @property
    def capacity(self) -> int:
        return self.pos.numel()

    def append(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> None:
        if not self.bounded and self.count == self.capacity:
            grow = self.capacity
            self.k = torch.cat([self.k, torch.zeros_like(self.k[:, :grow])], dim=1)
            self.v = torch.cat([self.v, torch.zeros_like(self.v[:, :grow])], dim=1)
            self.pos = torch.cat([self.pos, torch.full((grow,), -(2**62), dtype=torch.long)])
        slot = self.count % self.capacity
        self.k[:, slot], self.v[:, slot], self.pos[slot] = k, v, pos
        self.count += 1

    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = min(self.count, self.capacity)
        return self.k[:, :n], self.v[:, :n], self.pos[:n]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.pos))


class _LayerStream:
    """One band layer in streaming form. push(pos, x (D,)) -> list of (frame, y (D,)) that became ready."""

    def __init__(self, block, past: int | None, future: int | None, timers: _Timers):
        if future is None:
            raise ValueError("a layer with unbounded future (F = None) cannot stream")
        attn = block.attn
        self.block, self.past, self.future, self.t = block, past, future, timers
        self.cache = KVWindow(attn.heads, attn.head_dim, None if past is None else past + future + 1)
        self.pending: deque[tuple[int, torch.Tensor, torch.Tensor]] = deque()  # (frame, x, q)
        self.latest = -1

    def push(self, pos: int, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        attn = self.block.attn
        with self.t("qkv_proj"):
            q, k, v = attn.qkv(self.block.ln1(x)).view(3, attn.heads, attn.head_dim)  # 3 x (H, Dh)
        with self.t("cache_update"):
            self.cache.append(k, v, pos)
            self.pending.append((pos, x, q))
            self.latest = pos
        out = []
        while self.pending and self.pending[0][0] + self.future <= self.latest:
            out.append(self._emit(*self.pending.popleft()))
        return out

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        """End of stream: compute the waiting frames with the future that exists."""
        out = []
        while self.pending:
            out.append(self._emit(*self.pending.popleft()))
        return out

    def _emit(self, m: int, x: torch.Tensor, q: torch.Tensor) -> tuple[int, torch.Tensor]:
        with self.t("attention"):
            k, v, pos = self.cache.view()
            keep = (pos <= m + self.future) & (pos >= (m - self.past if self.past is not None else -(2**61)))
            if not bool(keep.all()):
                k, v, pos = k[:, keep], v[:, keep], pos[keep]
            y = x + self.block.attn.attend_window(q, k, v, pos - m)
        with self.t("ffn"):
            y = y + self.block.ffn(self.block.ln2(y))
        return m, y

    def nbytes(self) -> int:
        pend = sum(x.numel() * x.element_size() + q.numel() * q.element_size() for _, x, q in self.pending)
        return self.cache.nbytes() + pend


class StreamingBackend:
    """Back end in streaming form. push(emb (in_dim,)) -> list of (frame, logit) now final; flush() the rest."""

    def __init__(self, backend: Backend, timers: _Timers | None = None):
        self.b, self.t = backend, timers or _Timers(False)
        self.kind = backend.cfg.kind
        self.n = 0
        if self.kind == "gru_bi":
            raise ValueError("a bidirectional GRU needs the whole clip; it has no streaming form")
        if self.kind == "band":
            self.layers = [_LayerStream(blk, p, f, self.t) for blk, (p, f) in zip(backend.blocks, backend.reaches())]
        else:
            self.h = torch.zeros(backend.cfg.layers, 1, backend.cfg.d_model)

    def push(self, emb: torch.Tensor) -> list[tuple[int, float]]:
        with self.t("fusion"):
            x = self.b.fusion(emb)  # (d,)
        pos, self.n = self.n, self.n + 1
        if self.kind == "gru_uni":
            with self.t("gru"):
                y, self.h = self.b.gru(x[None, None], self.h)
            with self.t("head"):
                return [(pos, float(self.b.head(y[0, 0])))]
        return self._run([(pos, x)], flush=False)

    def flush(self) -> list[tuple[int, float]]:
        return [] if self.kind == "gru_uni" else self._run([], flush=True)

    def _run(self, ready: list[tuple[int, torch.Tensor]], flush: bool) -> list[tuple[int, float]]:
        for layer in self.layers:
            nxt = []
            for pos, x in ready:
                nxt += layer.push(pos, x)
            if flush:
                nxt += layer.flush()
            ready = nxt
        with self.t("head"):
            return [(pos, float(self.b.head(self.b.norm(y)))) for pos, y in ready]

    def nbytes(self) -> int:
        if self.kind == "gru_uni":
            return self.h.numel() * self.h.element_size()
        return sum(layer.nbytes() for layer in self.layers)


class ASDStreamer:
    """Whole model, frame by frame. push(face (S, S), mel (4, M)) -> list of (frame, logit)."""

    def __init__(self, model: ASDModel, profile: bool = False):
        model.eval()
        self.timers = _Timers(profile)
        self.front = StreamingFront(model.front, self.timers)
        self.back = StreamingBackend(model.backend, self.timers)
        self.peak_state_bytes = 0

    @torch.no_grad()
    def push(self, face: torch.Tensor, mel: torch.Tensor) -> list[tuple[int, float]]:
        out = self.back.push(self.front.step(face, mel))
        self.peak_state_bytes = max(self.peak_state_bytes, self.state_bytes())
        return out

    @torch.no_grad()
    def flush(self) -> list[tuple[int, float]]:
        return self.back.flush()

    def state_bytes(self) -> int:
        """Bytes of per-stream state held now (conv buffers, K/V windows, pending frames, GRU state)."""
        return self.front.nbytes() + self.back.nbytes()


@torch.no_grad()
def stream_clip(model: ASDModel, faces: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Run one clip (faces (T, S, S), mel (4T, M)) through ASDStreamer.

    Returns the logits (T,) in frame order and, per pushed frame, how many frames had been pushed when that
    frame's score came out (emit_step[t] - t is the delay)."""
    s = ASDStreamer(model)
    t_total, m = faces.shape[0], mel.shape[0] // faces.shape[0]
    logits, emitted_at = torch.full((t_total,), float("nan")), [-1] * t_total
    for t in range(t_total):
        for pos, logit in s.push(faces[t], mel[m * t : m * (t + 1)]):
            logits[pos], emitted_at[pos] = logit, t
    for pos, logit in s.flush():
        logits[pos], emitted_at[pos] = logit, t_total - 1
    return logits, emitted_at
