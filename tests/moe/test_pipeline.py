"""The whole MoE pipeline on a tiny random Gemma 3: build (MoEfication + distillation), PHDS and oracle SFT,
evaluation at each k, RoE tuning, decode timing and the report with its headline keys."""

import json

import pytest

from helpers import tiny_model_dir
from leaninfer.bench import moe as bench
from leaninfer.moe import build, evaluate, sft
from leaninfer.moe.build import BuildConfig
from leaninfer.moe.evaluate import EvalConfig, RoEGrid
from leaninfer.moe.sft import SFTConfig

TEXTS = [" ".join(f"w{3 + (i * 7 + j * 3) % 90}" for j in range(140)) for i in range(12)]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    src = tmp_path / "dense"
    tiny_model_dir(src, "gemma3")
    monkeypatch.setattr(build, "train_texts", lambda: TEXTS[:8])
    monkeypatch.setattr(sft, "train_texts", lambda: TEXTS[:8])
    monkeypatch.setattr(evaluate, "passages", lambda split: TEXTS[8:] if split == "test" else TEXTS[6:8])
    monkeypatch.setattr(bench, "SPEED_PROMPTS", ["w5 w6 w7"])
    return src


def test_pipeline_end_to_end(tiny, tmp_path):
    cfg = bench.MoEBenchConfig(
        build=BuildConfig(name="tiny-moe", source=str(tiny), n_experts=4, top_k=2, seq_len=16, collect_tokens=128,
                          cluster_tokens=64, router_steps=5, fit_steps=3, train_steps=2),
        sft=SFTConfig(base="tiny-moe", steps=3, seq_len=16, k_set=[1, 2], anchor_k=1),
        ks=[1, 2], test=EvalConfig(ppl_len=24, ctx_len=8, cont_len=4, offsets=(0,)),
        val=EvalConfig(split="val", ppl_len=16, ctx_len=8, cont_len=4, offsets=(0,)),
        grid=RoEGrid(taus=[0.0, 0.5], clean_layers=[0], n=2), roe_k=1, speed_tokens=3, speed_repeats=1)
    result = bench.run_moe_bench(cfg)
    h = result["headline"]
    for k in ("1", "2"):
        assert set(h[k]) == {"base_ppl", "phds_ppl", "oracle_ppl", "phds_acc", "oracle_acc", "ms_per_token"}
    for key in ("phds_agreement", "oracle_agreement", "roe_ppl", "plain_ppl_same_k", "roe_matches_plain_k",
                "roe_cost_ratio"):
        assert key in h
    tau0 = next(t for t in result["roe"]["tuning"]["trials"] if t["tau"] == 0.0)
    assert tau0["val_ppl"] == pytest.approx(result["roe"]["tuning"]["plain_val_ppl"], rel=1e-4)  # tau 0 = plain
    sft_meta = json.loads((build.model_dir("tiny-moe-phds") / "sft.json").read_text())
    assert sum(sft_meta["k_draws"].values()) == 3
    paths = bench.write_moe_report(result, tmp_path / "moe.json")
    assert all(p.exists() for p in paths)
    assert json.loads(paths[0].read_text())["headline"]["2"]["phds_ppl"] > 1


def test_cli_build_and_single_oracle(tiny, monkeypatch):
    """`moe build` reports steps/tokens/clock; `moe phds --no-phds --oracle-k K` runs only that oracle."""
    from typer.testing import CliRunner

    from leaninfer.cli import app

    small = dict(source=str(tiny), n_experts=4, top_k=2, seq_len=16, collect_tokens=128, cluster_tokens=64,
                 router_steps=5, fit_steps=3)
    monkeypatch.setattr(BuildConfig, "quick", classmethod(lambda cls, **kw: cls(name="cli-moe", train_steps=3,
                                                                                 **small)))
    runner = CliRunner()
    res = runner.invoke(app, ["moe", "build", "--quick", "--json"])
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout.strip().splitlines()[-1])
    assert built["steps_done"] == 3 and built["tokens"] == 48 and built["clock"] == "cpu"
    res = runner.invoke(app, ["moe", "phds", "--base", "cli-moe", "--no-phds", "--oracle-k", "1", "--k", "1",
                              "--k", "2", "--anchor-k", "1", "--steps", "2", "--loss", "ce", "--lr", "3e-5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert list(out) == ["oracle1"]
    assert not build.model_dir("cli-moe-phds").exists()
    meta = json.loads((build.model_dir("cli-moe-oracle1") / "sft.json").read_text())
    assert meta["oracle_k"] == 1 and meta["train"]["steps_done"] == 2 and meta["loss"] == "ce"
    assert meta["config"]["lr"] == 3e-5 and meta["config"]["router_lr"] == SFTConfig().router_lr


def _tiny_build(tiny, name: str) -> None:
    build.build_moe(BuildConfig(name=name, source=str(tiny), n_experts=4, top_k=2, seq_len=16, collect_tokens=128,
                                cluster_tokens=64, router_steps=5, fit_steps=3, train_steps=1))


def test_kd_sft_distils_from_the_dense_source(tiny):
    """loss "kd": the first SFT loss is KL(dense || MoE at the oracle's k) on the first chunk, the teacher being
    the dense model named in the base's build.json; sft.json records loss and teacher."""
    import random

    import torch

    from leaninfer.engine import load
    from leaninfer.models.moe import Routing
    from leaninfer.moe.data import chunk_tokens
    from leaninfer.moe.lm import Bf16Head, kd_loss

    _tiny_build(tiny, "kd-moe")
    cfg = SFTConfig(base="kd-moe", steps=2, seq_len=16, k_set=[1, 2], anchor_k=1)
    assert cfg.loss == "kd"
    assert sft.teacher_source(cfg, build.model_dir("kd-moe")) == str(tiny)
    student = load(build.model_dir("kd-moe"), precision="fp32").model
    _, _, _, tok, dense = build.load_dense(str(tiny))
    chunks = chunk_tokens(tok.encode, TEXTS[:8], 16)
    random.Random(cfg.seed).shuffle(chunks)
    x = torch.tensor([chunks[0]])
    with torch.no_grad():
        want = kd_loss(Bf16Head(student)(student(x, logits=False, routing=Routing(top_k=1)).hidden),
                       Bf16Head(dense)(dense(x, logits=False).hidden))
    teacher = build.load_dense(str(tiny))[4]
    n = sft.share_frozen(teacher, student)
    assert n > 0 and teacher.embed.weight.data_ptr() == student.embed.weight.data_ptr()
    with torch.no_grad():  # sharing the frozen tensors leaves the teacher's outputs as they were
        torch.testing.assert_close(teacher(x).logits, dense(x).logits)
    out = sft.run_sft(cfg, oracle_k=1)
    meta = json.loads((out / "sft.json").read_text())
    assert meta["loss"] == "kd" and meta["config"]["loss"] == "kd" and meta["teacher"] == str(tiny)
    assert meta["train"]["losses"][0] == pytest.approx(float(want), rel=1e-4)
    assert all(v >= 0 for v in meta["train"]["losses"])  # a KL, unlike the CE loss


def test_ce_sft_and_config_checks(tiny, tmp_path):
    _tiny_build(tiny, "ce-moe")
    out = sft.run_sft(SFTConfig(base="ce-moe", steps=1, seq_len=16, k_set=[1, 2], anchor_k=1, loss="ce"), oracle_k=2)
    meta = json.loads((out / "sft.json").read_text())
    assert meta["loss"] == "ce" and meta["teacher"] is None
    with pytest.raises(ValueError, match="loss"):
        SFTConfig(loss="mse")
    with pytest.raises(FileNotFoundError, match="build.json"):
        sft.teacher_source(SFTConfig(), tmp_path)
    assert sft.teacher_source(SFTConfig(teacher="default"), tmp_path) == "default"
