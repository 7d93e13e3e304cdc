"""End-to-end smoke test of the ASD benchmark pipeline on a tiny tone-speech dataset (no espeak needed)."""

import json

from leaninfer.streaming.asd.bench import BenchConfig, run_bench, write_reports
from leaninfer.streaming.asd.train import TrainConfig


def test_bench_pipeline_writes_headline_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANINFER_CACHE", str(tmp_path / "cache"))
    cfg = BenchConfig(quick=True, train_scenes=2, test_scenes=2, frames=40, pasts=[0, 2, None], futures=[0, 2],
                      profile_pasts=[0, 8], stream_frames=30, source="tone",
                      train=TrainConfig(front_steps=2, front_batch=4, front_window=8, backend_epochs=1,
                                        backend_crop=20))
    payload = run_bench(cfg, progress=False)
    h = payload["headline"]
    assert set(h) == {"gru_uni_map", "gru_bi_map", "full_transformer_map", "map_grid", "ms_per_frame_grid",
                      "peak_kb_grid"}
    assert set(h["map_grid"]) == {"0,0", "2,0", "inf,0", "0,2", "2,2", "inf,2"}
    assert set(h["ms_per_frame_grid"]) == set(h["map_grid"]) == set(h["peak_kb_grid"])
    assert h["peak_kb_grid"]["2,0"] < h["peak_kb_grid"]["inf,0"]
    assert payload["stream_equality"]["max_abs_diff"] < 1e-4
    assert payload["stream_equality"]["delays"] == [2]
    json.dumps(payload, default=str)
    paths = write_reports(payload, tmp_path)
    assert "mAP over past P" in paths["md"].read_text() and paths["png"].stat().st_size > 0


def test_cli_registers_asd_commands():
    from typer.testing import CliRunner

    from leaninfer.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["asd", "--help"])
    assert out.exit_code == 0 and all(c in out.output for c in ("data", "train", "stream", "report"))
    assert runner.invoke(app, ["bench", "asd", "--help"]).exit_code == 0
