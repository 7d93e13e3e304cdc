"""Frame-by-frame streaming equals whole-clip inference, for every model family and the runtime."""

import numpy as np
import pytest
import torch

from leaninfer.streaming.features import LogMel
from leaninfer.streaming.kws.models import KINDS, ModelConfig, build_model
from leaninfer.streaming.layers import set_streaming, stream_state_bytes
from leaninfer.streaming.reparam import reparameterize
from leaninfer.streaming.runtime import LiveMemoryTracer, StreamingRuntime, measure_stream

torch.set_num_threads(1)  # tiny models; the machine is shared


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("deployed", [False, True])
def test_frame_by_frame_equals_whole_clip(kind, deployed):
    model = build_model(ModelConfig(kind=kind, channels=12, bc_base=4, gru_hidden=16)).eval()
    if deployed:
        model = reparameterize(model)
    x = torch.randn(2, 60, 40)
    with torch.inference_mode():
        whole = model(x)
        set_streaming(model, True)
        frames = torch.cat([model(x[:, t : t + 1]) for t in range(60)], dim=1)
        set_streaming(model, True)
        chunks = torch.cat([model(x[:, t : t + 7]) for t in range(0, 60, 7)], dim=1)
    torch.testing.assert_close(frames, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunks, whole, atol=1e-5, rtol=1e-5)
    assert stream_state_bytes(model) > 0


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
    torch.testing.assert_close(pooled[-1], ref[-10:].mean(0), atol=1e-5, rtol=1e-5)
    assert len(rt.step_times) == ref.shape[0]


def test_measure_stream_and_tracer():
    model = reparameterize(build_model(ModelConfig(kind="unibranch", channels=8)).eval())
    stats = measure_stream(model, torch.randn(80, 40), warmup=10)
    assert stats["ms_per_frame"] > 0 and stats["peak_kb"] >= stats["state_kb"] > 0
    tracer = LiveMemoryTracer()
    with tracer:
        a = torch.ones(1000)
        b = a * 2
        del a, b
        c = torch.ones(10)
    assert tracer.peak >= 8000 and tracer.live <= 100
    del c
