"""Issue 20 items 2, 5, 9, 13, 14 and issue 15 item 13: names cannot escape the cache, checks run before
expensive work, interrupted builds resume instead of being trusted, options are not silently ignored, and
CLI errors are one line on stderr with a non-zero status (a traceback only with --verbose)."""

import json

import pytest

from leaninfer.cli import main
from leaninfer.io.cachefs import check_name, inside


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "..", ".hidden", "", "x" * 200, "a\\b"])
def test_cache_names_cannot_escape(name, tmp_path):
    from leaninfer.moe.build import BuildConfig, model_dir

    with pytest.raises(ValueError, match="invalid"):
        check_name(name)
    with pytest.raises(ValueError):
        BuildConfig(name=name)
    with pytest.raises(ValueError):
        model_dir(name)
    assert not any(tmp_path.parent.glob("x"))
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path, tmp_path / ".." / "x")


def test_moe_build_quick_keeps_explicit_options(monkeypatch, capsys):
    from leaninfer.moe import build

    seen = {}

    def fake_build(cfg, force=False):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(build, "build_moe", fake_build)
    code, _, err = run_cli(capsys, "moe", "build", "--quick", "--name", "mine", "--experts", "4", "--k", "2")
    assert code == 2 and "stop here" in err
    cfg = seen["cfg"]
    quick = build.BuildConfig.quick()
    assert (cfg.name, cfg.n_experts, cfg.top_k, cfg.train_steps) == ("mine", 4, 2, quick.train_steps)
    code, _, err = run_cli(capsys, "moe", "build", "--name", "../../x")
    assert code == 2 and "invalid MoE name" in err and len(err.strip().splitlines()) == 1


def test_distill_build_killed_midway_resumes_and_is_never_trusted_partial(engine, tmp_path, monkeypatch):
    from leaninfer.train import distill
    from leaninfer.train.distill import DistillConfig, build_distill_set, is_complete, load_distill_set

    cfg = DistillConfig(n_prompts=4, new_tokens=3, shard_size=2, derived=False)
    real, calls = distill.greedy_batch, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed midway
        return real(*a, **k)

    monkeypatch.setattr(distill, "greedy_batch", dies_on_second_shard)
    out = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        build_distill_set(engine, out, cfg)
    assert (out / "config.json").exists() and not is_complete(out)
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))  # nothing half-written
    with pytest.raises(ValueError, match="incomplete"):
        load_distill_set(out)
    build_distill_set(engine, out, cfg)  # resumes: only the missing shard is built
    assert len(calls) == 3 and is_complete(out, cfg) and len(load_distill_set(out)) == 4
    with pytest.raises(ValueError, match="other settings"):
        build_distill_set(engine, out, DistillConfig(n_prompts=4, new_tokens=5, shard_size=2, derived=False))
    with pytest.raises(ValueError, match="worker"):
        DistillConfig(worker=3, n_workers=2)


def test_draft_commands_check_options_before_loading(capsys, monkeypatch, tmp_path):
    import leaninfer

    def no_load(*a, **k):
        raise AssertionError("the target was loaded before the options were checked")

    monkeypatch.setattr(leaninfer, "load", no_load)
    code, _, err = run_cli(capsys, "draft", "data", "--worker", "3", "--n-workers", "2")
    assert code == 2 and "--worker" in err
    code, _, err = run_cli(capsys, "draft", "train", "--kind", "eagel")
    assert code == 2 and "unknown draft kind" in err
    code, _, err = run_cli(capsys, "draft", "train", "--data", str(tmp_path / "none"))
    assert code == 2 and "no distillation set" in err
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "draft", "train", "--data", str(tmp_path / "partial"))
    assert code == 2 and "incomplete" in err


def test_draft_data_defaults_are_the_set_draft_train_reads():
    import inspect

    from leaninfer.commands import draft

    params = inspect.signature(draft.draft_data).parameters
    assert params["n_prompts"].default == draft.DEFAULT_PROMPTS
    assert params["derived"].default is True and params["new_tokens"].default == 128


def test_cli_errors_are_one_line_and_verbose_shows_the_traceback(capsys, tmp_path):
    for args in (["generate", "hi", "--model", str(tmp_path / "missing")], ["generate", "hi", "--model", ""],
                 ["info", "--model", str(tmp_path)], ["generate"], ["no-such-command"],
                 ["draft", "train", "--target", str(tmp_path / "missing")]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err
    (tmp_path / "leaninfer.json").write_text('{"arch": "gem')  # a truncated config names its file
    code, _, err = run_cli(capsys, "info", "--model", str(tmp_path))
    assert code == 2 and "leaninfer.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "info", "--model", str(tmp_path), "--verbose")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_kv_ask_fails_fast_without_data_or_output_folder(capsys, monkeypatch, tmp_path):
    import leaninfer

    monkeypatch.setenv("LEANINFER_SHARED_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(leaninfer, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    code, _, err = run_cli(capsys, "kv", "ask", "-q", "who?")
    assert code == 2 and "LoCoMo data not found" in err
    code, _, err = run_cli(capsys, "kv", "ask", "-q", "who?", "--json", str(tmp_path / "missing" / "a.json"))
    assert code == 2 and "no such folder" in err


def test_kws_commands_check_the_checkpoint_before_building_the_corpus(capsys, monkeypatch, tmp_path):
    from leaninfer.commands import kws

    monkeypatch.setattr(kws, "_corpus", lambda *a, **k: pytest.fail("built the corpus first"))
    for args in (["eval", str(tmp_path)], ["reparam", str(tmp_path), str(tmp_path / "o")],
                 ["quantize", str(tmp_path), str(tmp_path / "o")], ["stream", str(tmp_path)]):
        code, _, err = run_cli(capsys, "kws", *args)
        assert code == 2 and "no KWS model" in err, (args, err)


def test_asd_commands_validate_before_work(capsys, monkeypatch, tmp_path):
    from leaninfer.streaming.asd import data

    monkeypatch.setattr(data, "synthetic", lambda *a, **k: pytest.fail("rendered data first"))
    for args, words in ((["train", "--kind", "lstm"], "unknown back end"), (["train", "--past", "x"], "--past"),
                        (["train", "--train-scenes", "0"], "train-scenes"),
                        (["stream", str(tmp_path / "none.pt")], "does not exist"),
                        (["report", str(tmp_path / "none.json")], "does not exist")):
        code, _, err = run_cli(capsys, "asd", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "asd", "stream", str(bad))
    assert code == 2 and "not an ASD checkpoint" in err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"x": 1}))
    code, _, err = run_cli(capsys, "asd", "report", str(bad_json))
    assert code == 2 and "not a results JSON" in err
