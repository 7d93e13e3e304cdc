"""Causal, streamable layers: the same forward runs on a whole clip or one frame at a time.

Time is always the last axis. In whole-clip mode a causal conv pads (kernel-1)*dilation zeros on the past
side. In streaming mode (`set_streaming(model, True)`) each causal layer keeps a ring buffer of its last
(kernel-1)*dilation + 1 input frames and the GRU keeps its hidden state, so feeding frames one by one gives the
same outputs as the whole clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _StreamState:
    """Mixin: a past-context buffer used only in streaming mode.

    One-frame steps use an in-place circular buffer of (kernel-1)*dilation + 1 frames and gather only the
    kernel taps, so a step allocates just (..., kernel) — no shifting or concatenation of the whole buffer.

    Time stride s (1-D convs): output j is aligned with input frame j*s + s - 1 — the newest frame of its group,
    so a strided layer never looks ahead; it emits one frame every s input frames (none in between, an empty
    (..., 0) tensor) and a clip of T frames gives floor(T / s) outputs. `_count` tracks the phase in streaming.
    """

    streaming: bool = False
    state: torch.Tensor | None = None

    def _past(self) -> int:
        raise NotImplementedError

    def _time_dilation(self) -> int:
        raise NotImplementedError

    def _time_stride(self) -> int:
        return 1

    def _with_context(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Prepend past context along the last axis. Returns (x with context, taps_gathered).

        With a time stride the result starts at the oldest tap of the first output frame (for a strided conv
        over it); it is empty along the last axis when no output frame is due.
        """
        past, s = self._past(), self._time_stride()
        if past == 0 and s == 1:
            return x, False
        if not self.streaming:
            pad = [past, 0] if x.dim() == 3 else [past, 0, 0, 0]
            return _first_output(F.pad(x, pad), s - 1, past, s), False
        if x.shape[-1] == 0:
            return x, False
        if x.shape[-1] == 1:
            if self.state is None or self.state.shape[-1] != past + 1:
                self.state = x.new_zeros(*x.shape[:-1], past + 1)  # circular buffer incl. the current frame
                self._ptr, self._idx, self._count = 0, {}, 0
            self._ptr = (self._ptr + 1) % (past + 1)
            self.state[..., self._ptr] = x[..., 0]
            self._count += 1
            if (self._count - 1) % s != s - 1:
                return x[..., :0], False  # no output frame due at this step
            idx = self._idx.get(self._ptr)
            if idx is None:
                offsets = torch.arange(past, -1, -self._time_dilation())  # oldest tap first
                idx = self._idx[self._ptr] = (self._ptr - offsets) % (past + 1)
            return self.state.index_select(-1, idx), True  # (..., kernel)
        # multi-frame chunk in streaming mode: linearise the buffer, then concatenate
        if self.state is None:
            hist, self._count = x.new_zeros(*x.shape[:-1], past), 0
        else:
            order = (torch.arange(1, past + 2) + self._ptr) % (past + 1)
            hist = self.state.index_select(-1, order)[..., 1:]
        full = torch.cat([hist, x], dim=-1)  # (..., past + T)
        first = (s - 1 - self._count) % s  # offset in x of the first output frame
        self.state = full[..., -(past + 1) :].clone()
        self._ptr, self._idx, self._count = past, {}, self._count + x.shape[-1]
        return _first_output(full, first, past, s), False


def _first_output(full: torch.Tensor, first: int, past: int, stride: int) -> torch.Tensor:
    """full (..., past + T) -> the part a strided conv needs, starting `first` frames into x; empty if none due."""
    if stride == 1:
        return full
    n_x = full.shape[-1] - past
    return full[..., first:] if first < n_x else full[..., :0]


class CausalConv1d(_StreamState, nn.Conv1d):
    """Conv1d over (B, C, T) with past-side padding and an optional causal time stride.

    Output length is T (stride 1) or floor(T / stride); see `_StreamState` for the stride alignment.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        stride: int = 1,
    ):
        nn.Conv1d.__init__(self, c_in, c_out, kernel_size, stride=stride, dilation=dilation, groups=groups, bias=bias)

    def _past(self) -> int:
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def _time_dilation(self) -> int:
        return self.dilation[0]

    def _time_stride(self) -> int:
        return self.stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C', T // stride)
        x, gathered = self._with_context(x)
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        if gathered:
            return F.conv1d(x, self.weight, self.bias, 1, 0, 1, self.groups)
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CausalConv2d(_StreamState, nn.Conv2d):
    """Conv2d over (B, C, F, T): 'same' (or valid) padding in frequency, causal in time, stride only in frequency."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: tuple[int, int],
        freq_stride: int = 1,
        time_dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        freq_padding: int | None = None,
    ):
        kf, kt = kernel_size
        nn.Conv2d.__init__(
            self, c_in, c_out, (kf, kt), stride=(freq_stride, 1), dilation=(1, time_dilation), groups=groups, bias=bias
        )
        self.freq_padding = kf // 2 if freq_padding is None else freq_padding

    def _past(self) -> int:
        return (self.kernel_size[1] - 1) * self.dilation[1]

    def _time_dilation(self) -> int:
        return self.dilation[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, T) -> (B, C', F', T)
        x, gathered = self._with_context(x)
        if self.freq_padding:
            x = F.pad(x, [0, 0, self.freq_padding, self.freq_padding])
        dilation = (self.dilation[0], 1) if gathered else self.dilation
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, dilation, self.groups)


class StreamGRU(nn.Module):
    """Uni-directional GRU over (B, T, D) that carries its hidden state across calls in streaming mode."""

    def __init__(self, d_in: int, hidden: int, layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, num_layers=layers, batch_first=True)
        self.streaming, self.state = False, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, H)
        if not self.streaming:
            return self.gru(x)[0]
        y, self.state = self.gru(x, self.state)
        return y


def set_streaming(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch every causal layer of `model` in or out of streaming mode and clear the buffers."""
    for m in model.modules():
        if isinstance(m, (_StreamState, StreamGRU)):
            m.streaming, m.state = on, None
    return model


def stream_state_bytes(model: nn.Module) -> int:
    """Bytes held in streaming buffers / hidden states right now."""
    total = 0
    for m in model.modules():
        if isinstance(m, (_StreamState, StreamGRU)) and m.state is not None:
            total += m.state.numel() * m.state.element_size()
    return total
