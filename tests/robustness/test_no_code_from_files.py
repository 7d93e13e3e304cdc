"""Issue 20 item 1: no loader runs code from a file. Every loader is fed a pickle whose unpickling would create
a marker file; each must refuse it, and the marker must never appear."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears if the loader runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path: Path, marker: Path, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"w": torch.zeros(2)}, "payload": Payload(marker), **extra}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a loader ran code from a file"


def test_source_has_no_unsafe_loads():
    hits = subprocess.run(["grep", "-rnE", r"weights_only=False|pickle\.load", str(SRC)], capture_output=True,
                          text=True).stdout
    assert hits == "", hits
    # every torch.load in the library goes through safe_torch_load or names weights_only=True itself
    for f in SRC.rglob("*.py"):
        for line in f.read_text().splitlines():
            if re.search(r"torch\.load\(", line):
                assert "weights_only=True" in line, f"{f}: {line.strip()}"


def test_safe_torch_load_refuses_payload(tmp_path, marker):
    from leaninfer.io.cachefs import safe_torch_load

    path = write_payload(tmp_path / "x.pt", marker)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        safe_torch_load(path)


def test_kws_checkpoint_refuses_payload(tmp_path, marker):
    from leaninfer.streaming.kws.export import load_model, save_model
    from leaninfer.streaming.kws.models import ModelConfig, build_model

    model = build_model(ModelConfig())
    model.feat_norm = (torch.zeros(model.cfg.n_mels), torch.ones(model.cfg.n_mels))
    save_model(model, tmp_path / "ckpt")
    assert load_model(tmp_path / "ckpt") is not None  # the honest checkpoint loads
    write_payload(tmp_path / "ckpt" / "weights.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        load_model(tmp_path / "ckpt")


def test_kws_corpus_cache_refuses_payload(tmp_path, marker):
    from leaninfer.paths import cache_dir
    from leaninfer.streaming.kws import data

    cfg = data.DataConfig(clips_per_class=(1, 1, 1), streams=(1, 1, 1), extra={"test": str(tmp_path)})
    path = write_payload(cache_dir("kws", f"corpus-{cfg.key()}") / "corpus.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        data.build_corpus(cfg)
    (path.parent / "config.json").write_text(json.dumps(data.asdict(cfg)))
    bigger = data.DataConfig(clips_per_class=(2, 1, 1), streams=(1, 1, 1), extra={"test": str(tmp_path)})
    with pytest.raises(ValueError, match="refusing"):
        data._prior_corpus(bigger)  # the prefix-reuse path reads other cached corpora too


def test_draft_weights_and_checkpoint_refuse_payload(tmp_path, marker):
    from leaninfer.io.drafts import load_draft
    from leaninfer.train.drafts import DraftTrainConfig, DraftTrainer

    folder = tmp_path / "draft"
    folder.mkdir()
    config = {"kind": "medusa", "dim": 8, "target_vocab": 16, "draft_vocab": 8, "n_heads": 1}
    (folder / "config.json").write_text(json.dumps({"kind": "medusa", "config": config}))
    write_payload(folder / "weights.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        load_draft(folder)
    trainer = DraftTrainer.__new__(DraftTrainer)  # resume() reads only the checkpoint and the config
    trainer.out_dir, trainer.cfg = folder, DraftTrainConfig()
    write_payload(folder / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        trainer.resume()


def test_distill_shard_refuses_payload(tmp_path, marker):
    from leaninfer.train.distill import _load

    write_payload(tmp_path / "shard-0000.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        _load(tmp_path, "shard-")


def test_asd_checkpoint_refuses_payload(tmp_path, marker):
    from leaninfer.streaming.asd.train import load_model

    write_payload(tmp_path / "asd.pt", marker)
    with pytest.raises(Exception):  # noqa: B017 - torch's own weights_only error
        load_model(tmp_path / "asd.pt")


def test_moe_build_and_training_checkpoints_refuse_payload(tiny_dir, marker, monkeypatch):
    from leaninfer.moe import build
    from leaninfer.moe.build import BuildConfig
    from leaninfer.paths import cache_dir

    src = tiny_dir
    texts = [" ".join(f"w{3 + (i * 7 + j * 3) % 90}" for j in range(140)) for i in range(8)]
    monkeypatch.setattr(build, "train_texts", lambda: texts)
    cfg = BuildConfig(name="payload-moe", source=str(src), n_experts=4, top_k=2, seq_len=16, collect_tokens=128,
                      cluster_tokens=64, router_steps=2, fit_steps=1, train_steps=1)
    work = cache_dir("moe", "payload-moe.work")
    write_payload(work / "init.pt", marker)
    with pytest.raises(ValueError, match="refusing"):
        build.build_moe(cfg)
    (work / "init.pt").unlink()
    write_payload(work / "train.pt", marker)  # the distillation checkpoint (moe/train.py)
    with pytest.raises(ValueError, match="refusing"):
        build.build_moe(cfg)
