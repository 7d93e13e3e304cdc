"""Training loops, ONNX export and the CLI on a tiny in-memory corpus (no espeak needed)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leaninfer.streaming.kws.data import CLASSES, ClipSet, StreamSet
from leaninfer.streaming.kws.export import check_onnx, export_onnx, load_model, save_model
from leaninfer.streaming.kws.models import ModelConfig
from leaninfer.streaming.kws.train import TrainConfig, eval_clips, stream_posteriors, train_clips, train_frames
from leaninfer.streaming.reparam import reparameterize

torch.set_num_threads(1)  # tiny models; the machine is shared


PATTERNS = torch.randn(len(CLASSES), 1, 40, generator=torch.Generator().manual_seed(99))  # a spectrum per class


def _clips(seed: int, per_class: int) -> ClipSet:
    """Clips = their class's spectrum (every frame) + noise; each split draws its own noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(per_class)
    return ClipSet(torch.randn(labels.numel(), 30, 40, generator=g) + 1.5 * PATTERNS[labels], labels)


def tiny_corpus() -> dict:
    g = torch.Generator().manual_seed(0)
    clips = {"train": _clips(0, 4), "val": _clips(1, 2), "test": _clips(2, 3)}
    events = [
        [
            {"start": 0.5, "end": 1.0, "text": "hey nova", "kind": "wake"},
            {"start": 2.0, "end": 2.4, "text": "yes", "kind": "command"},
        ]
    ] * 2
    streams = StreamSet([torch.randn(350, 40, generator=g) for _ in range(2)], events, [3.5, 3.5])
    return {
        "clips": clips,
        "streams": {"train": streams, "val": streams, "test": streams},
    }


@pytest.mark.parametrize("kind", ["repcnn", "unibranch", "gru"])
def test_train_clips_runs_and_learns_something(kind):
    """Trained on the train clips, scored on held-out test clips (a model that memorised its training clips, or
    learnt nothing, stays near chance there)."""
    clips = tiny_corpus()["clips"]
    model = train_clips(ModelConfig(kind=kind, channels=8, gru_hidden=8), TrainConfig(steps=30, batch=16),
                        clips["train"])
    assert eval_clips(model, clips["test"]) > 3 * 100 / len(CLASSES)  # measured 31-64%; shuffled labels: 3-15%


@pytest.mark.parametrize("loss", ["ce", "sal", "sa+fl", "safl"])
def test_train_frames_all_losses(loss):
    s = tiny_corpus()["streams"]["train"]
    tc = TrainConfig(steps=3, batch=2, loss=loss, segment=100)
    model = train_frames(ModelConfig(kind="unibranch", n_out=1, channels=8), tc, s, "kws")
    post = stream_posteriors(model, s)
    assert len(post) == 2 and post[0].shape == (350,) and np.all((post[0] >= 0) & (post[0] <= 1))


def test_r2_training_on_fused_kernels_and_checkpoint(tmp_path):
    c = tiny_corpus()["clips"]["train"]
    model = train_clips(ModelConfig(kind="repcnn", channels=8), TrainConfig(steps=5, reg="linf", reg_lambda=0.1), c)
    fused = reparameterize(model)
    save_model(model, tmp_path / "multi")
    save_model(fused, tmp_path / "fused", deployed=True)
    x = torch.randn(2, 30, 40)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(tmp_path / "multi")(x), model(x))
        torch.testing.assert_close(load_model(tmp_path / "fused")(x), fused(x))


def test_onnx_export_matches_pytorch(tmp_path):
    c = tiny_corpus()["clips"]["train"]
    fused = reparameterize(train_clips(ModelConfig(kind="repcnn", channels=8), TrainConfig(steps=2), c))
    path = export_onnx(fused, tmp_path / "m.onnx")
    assert check_onnx(fused, path, torch.randn(2, 45, 40)) <= 1e-4


def test_cli(tmp_path, monkeypatch):
    from leaninfer.cli import app
    from leaninfer.streaming.kws import data

    corpus = tiny_corpus()
    monkeypatch.setattr(data, "build_corpus", lambda *a, **k: corpus)
    runner = CliRunner()
    ck = str(tmp_path / "ck")
    r = runner.invoke(app, ["kws", "train", ck, "--steps", "3", "--quick"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "fused"
    r = runner.invoke(
        app, ["kws", "reparam", ck, str(out), "--onnx", str(tmp_path / "m.onnx"), "--json", str(tmp_path / "r.json")]
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["max_abs_diff"] <= 1e-5 and res["onnx_max_abs_diff"] <= 1e-4
    r = runner.invoke(app, ["kws", "quantize", str(out), str(tmp_path / "q"), "--bits", "2", "--quick"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["kws", "eval", str(tmp_path / "q"), "--quick"])
    assert r.exit_code == 0 and "ms_per_frame" in r.output
    r = runner.invoke(app, ["kws", "data", "--quick"])
    assert r.exit_code == 0 and "stream_hours" in r.output


def test_bench_training_in_worker_processes_equals_serial():
    """--workers forks one-thread processes for the clip section and each SAL cell: same seeds, same numbers."""
    from leaninfer.streaming.kws.bench import BenchConfig, run_training

    corpus = tiny_corpus()
    bc = BenchConfig(clip_steps=2, frame_steps=2, frame_batch=2, seeds=(0,), sal_seeds=(0, 1), onset_seeds=(0,))
    serial, _, sal_serial = run_training(corpus, bc, progress=False, workers=1)
    forked, models, sal_forked = run_training(corpus, bc, progress=False, workers=2)
    assert json.dumps(serial, sort_keys=True) == json.dumps(forked, sort_keys=True)
    assert list(sal_forked) == list(sal_serial)
    for key, cell in sal_serial.items():
        assert [p["frr"] for p in cell["points"]] == [p["frr"] for p in sal_forked[key]["points"]]
        assert cell["curve"] == sal_forked[key]["curve"]
    assert set(models) == {"repcnn", "unibranch", "bcresnet", "gru"}
