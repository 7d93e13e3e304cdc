"""`leaninfer generate --moe-k K [--roe N]` on a tiny OLMoE folder; clear errors for dense models."""

import json

from typer.testing import CliRunner

from helpers import tiny_model_dir
from leaninfer.cli import app

runner = CliRunner()


def _gen(folder, *extra):
    return runner.invoke(app, ["generate", "w5 w6 w7", "--model", str(folder), "--max-new-tokens", "5",
                               "--precision", "fp32", "--json", *extra])


def test_generate_moe_k_and_roe(tmp_path):
    tiny_model_dir(tmp_path, "olmoe")
    plain = _gen(tmp_path, "--moe-k", "1")
    assert plain.exit_code == 0, plain.output
    d = json.loads(plain.stdout.strip().splitlines()[-1])
    assert d["moe_k"] == 1 and d["roe_n"] == 1
    roe0 = _gen(tmp_path, "--moe-k", "1", "--roe", "3", "--roe-tau", "0")
    assert roe0.exit_code == 0, roe0.output
    r = json.loads(roe0.stdout.strip().splitlines()[-1])
    assert r["roe_n"] == 3 and r["token_ids"] == d["token_ids"]  # tau 0: the roster decodes like plain


def test_moe_k_on_dense_model_is_a_clear_error(tmp_path):
    tiny_model_dir(tmp_path, "gemma3")
    res = _gen(tmp_path, "--moe-k", "2")
    assert res.exit_code == 2 and "MoE" in res.output
