"""Frame-by-frame streaming equals whole-clip inference, for every model family and the runtime."""

import numpy as np
import pytest
import torch

from leaninfer.streaming.features import LogMel
from leaninfer.streaming.kws.models import KINDS, ModelConfig, build_model, hold_frames, time_stride
from leaninfer.streaming.kws.train import aligned_frames
from leaninfer.streaming.layers import set_streaming, stream_state_bytes
from leaninfer.streaming.reparam import reparameterize
from leaninfer.streaming.runtime import LiveMemoryTracer, StreamingRuntime, measure_stream

torch.set_num_threads(1)  # tiny models; the machine is shared


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("deployed", [False, True])
@pytest.mark.parametrize("strides", [(2, 2, 1, 1), (1, 1, 1, 1), (1, 3, 1, 2)])
def test_frame_by_frame_equals_whole_clip(kind, deployed, strides):
    if kind in ("bcresnet", "gru") and strides != (2, 2, 1, 1):
        pytest.skip("strides only apply to the CNNs")
    cfg = ModelConfig(kind=kind, channels=12, bc_base=4, gru_hidden=16, strides=strides)
    model = build_model(cfg).eval()
    if deployed:
        model = reparameterize(model)
    x = torch.randn(2, 61, 40)
    with torch.inference_mode():
        whole = model(x)
        set_streaming(model, True)
        frames = torch.cat([model(x[:, t : t + 1]) for t in range(61)], dim=1)
        set_streaming(model, True)
        chunks = torch.cat([model(x[:, t : t + 7]) for t in range(0, 61, 7)], dim=1)
        set_streaming(model, True)
        mixed = torch.cat([model(x[:, :5]), *(model(x[:, t : t + 1]) for t in range(5, 61))], dim=1)
    assert whole.shape[1] == 61 // time_stride(model)
    torch.testing.assert_close(frames, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunks, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed, whole, atol=1e-5, rtol=1e-5)
    assert stream_state_bytes(model) > 0


def test_hold_frames_and_aligned_targets():
    out = torch.arange(1.0, 4.0).reshape(1, 3)  # 3 outputs of a stride-4 model over 14 frames
    held = hold_frames(out, 4, 14, fill=-1.0)
    assert held.tolist() == [[-1, -1, -1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]]
    frames = torch.arange(14.0).reshape(1, 14)
    assert aligned_frames(frames, 4, 3).tolist() == [[3.0, 7.0, 11.0]]
    assert hold_frames(out, 1, 3) is out and aligned_frames(frames, 1, 14) is frames


def test_runtime_audio_to_logits_matches_offline():
    model = reparameterize(build_model(ModelConfig(kind="repcnn", channels=8)).eval())
    lm = LogMel()
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    rt = StreamingRuntime(model, lm, window=10)
    outs = [rt.push_audio(wave[i : i + 333]) for i in range(0, wave.size, 333)]
    frame_logits = torch.cat([o[0] for o in outs if o[0].numel()])
    pooled = torch.cat([o[1] for o in outs if o[1].numel()])
    set_streaming(model, False)
    with torch.inference_mode():
        ref = model(lm(wave)[None])[0]
    torch.testing.assert_close(frame_logits, ref, atol=1e-5, rtol=1e-5)
    ring = -(-10 // time_stride(model))  # a 10-frame window holds ceil(10 / stride) output frames
    torch.testing.assert_close(pooled[-1], ref[-ring:].mean(0), atol=1e-5, rtol=1e-5)
    assert len(rt.step_times) == lm(wave).shape[0] and rt.stride == time_stride(model) == 4


def test_measure_stream_and_tracer():
    model = reparameterize(build_model(ModelConfig(kind="unibranch", channels=8)).eval())
    stats = measure_stream(model, torch.randn(80, 40), warmup=10)
    assert stats["ms_per_frame"] > 0 and stats["peak_kb"] >= stats["state_kb"] > 0
    assert stats["full_step_ms"] >= stats["ms_per_frame"] and stats["stride"] == 4
    # state = conv ring buffers ((k-1)*d + 1 frames of each layer's input) + the logits ring (ceil(98 / 4) frames)
    cfg = model.cfg
    conv = 3 * cfg.n_mels + sum(cfg.channels * ((cfg.kernel - 1) * d + 1) for d in cfg.dilations)
    assert stats["state_kb"] * 1024 == 4 * (conv + 25 * cfg.n_out)
    tracer = LiveMemoryTracer()
    with tracer:
        a = torch.ones(1000)
        b = a * 2
        del a, b
        c = torch.ones(10)
    assert tracer.peak >= 8000 and tracer.live <= 100
    del c
