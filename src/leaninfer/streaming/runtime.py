"""Streaming runtime: audio chunks -> causal log-mel -> model, one 10 ms hop at a time.

The model runs in streaming mode (its causal convs keep ring buffers, the GRU its hidden state); the runtime
keeps a ring buffer of the last `window` frame logits for clip-style (mean-pooled) decisions. It records
the wall time of every model step and can measure the step's peak live memory.

Peak memory of a step = bytes held in streaming state (ring buffers, hidden states, the logits ring)
+ the peak of live intermediate tensors while the step runs, traced with a TorchDispatchMode that adds
each op's output bytes and subtracts them when the tensor's storage is freed. Weights are not counted
(reported separately as parameters).
"""

from __future__ import annotations

import time
import weakref

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from leaninfer.streaming.features import LogMel
from leaninfer.streaming.layers import set_streaming, stream_state_bytes


class LiveMemoryTracer(TorchDispatchMode):
    """Tracks live bytes of tensors created inside the mode; `.peak` is the maximum seen."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self._seen or key in inputs or st.nbytes() == 0:  # views / in-place: no new memory
                    continue
                self._seen.add(key)
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, key, st.nbytes())
        return out


def model_stride(model: nn.Module) -> int:
    """Input frames per output frame of `model` (or of the first wrapped module that declares `time_stride`)."""
    for m in model.modules():
        if hasattr(m, "time_stride"):
            return int(m.time_stride)
    return 1


class StreamingRuntime:
    """Feed audio (or features) to a causal model hop by hop.

    Args:
        model: maps (1, T, n_mels) -> (1, T // S, n_out) with time stride S (`model_stride`); must be causal (all
            models in kws.models are). A strided model emits an output frame every S hops.
        logmel: the front end; window: input frames covered by the logits ring for mean pooling (98 = 1 s);
            the ring holds ceil(window / S) output frames.
    """

    def __init__(self, model: nn.Module, logmel: LogMel | None = None, window: int = 98):
        self.model = model.eval()
        self.logmel = logmel or LogMel()
        self.window = window
        self.stride = model_stride(model)
        self.reset()

    def reset(self) -> None:
        set_streaming(self.model, True)
        self.front = self.logmel.stream()
        self.ring: torch.Tensor | None = None  # (ceil(window / stride), n_out)
        self.filled = 0
        self.step_times: list[float] = []

    @torch.inference_mode()
    def step(self, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One frame (n_mels,) -> (output logits (n_out,), pooled logits over the window (n_out,)), or None on a
        hop where a strided model emits no output frame."""
        t0 = time.perf_counter()
        out = self.model(frame.reshape(1, 1, -1))  # (1, 0 or 1, n_out)
        if out.shape[1] == 0:
            self.step_times.append(time.perf_counter() - t0)
            return None
        y = out[0, 0]  # (n_out,)
        if self.ring is None:
            self.ring = y.new_zeros(-(-self.window // self.stride), y.numel())
        n = self.ring.shape[0]
        self.ring[self.filled % n] = y
        self.filled += 1
        pooled = self.ring[: min(self.filled, n)].mean(dim=0)
        self.step_times.append(time.perf_counter() - t0)
        return y, pooled

    def push_audio(self, chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio samples -> (output logits (n_new, n_out), pooled logits (n_new, n_out)) for the outputs emitted."""
        frames = self.front.push(chunk)
        outs = [o for o in (self.step(f) for f in frames) if o is not None]
        if not outs:
            return torch.zeros(0), torch.zeros(0)
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def run_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(T, n_mels) -> (T // stride, n_out) output logits, fed frame by frame."""
        return torch.stack([o[0] for o in (self.step(f) for f in feats) if o is not None])

    def state_bytes(self) -> int:
        ring = self.ring.numel() * self.ring.element_size() if self.ring is not None else 0
        return stream_state_bytes(self.model) + ring


def measure_stream(model: nn.Module, feats: torch.Tensor, warmup: int = 50, window: int = 98) -> dict[str, float]:
    """Per-frame latency (ms) and peak memory (KiB) of streaming `model` over feats (T, n_mels), one thread.

    ms_per_frame: compute per 10 ms hop, amortised over the stride phases (mean over phases of the per-phase
    median step time; the median step time for stride 1). full_step_ms: the slowest phase's median (the hop on
    which every layer runs). Peak memory: streaming state + the largest live-intermediate peak over one step of
    every phase.
    """
    torch.set_num_threads(1)
    rt = StreamingRuntime(model, window=window)
    s = rt.stride
    warmup += (-warmup) % s  # keep the phase of step i equal to i mod s
    for f in feats[:warmup]:
        rt.step(f)
    rt.step_times.clear()
    for f in feats[warmup:]:
        rt.step(f)
    times = np.asarray(rt.step_times) * 1000.0
    phase = np.asarray([np.median(times[p::s]) for p in range(s)])
    act = 0
    for f in feats[-s:]:
        tracer = LiveMemoryTracer()
        with tracer:
            rt.step(f.clone())
        act = max(act, tracer.peak)
    state = rt.state_bytes()
    return {
        "ms_per_frame": float(phase.mean()),
        "full_step_ms": float(phase.max()),
        "p90_ms": float(np.percentile(times, 90)),
        "stride": s,
        "state_kb": state / 1024.0,
        "activation_peak_kb": act / 1024.0,
        "peak_kb": (state + act) / 1024.0,
    }
