"""`leaninfer kws data|train|reparam|quantize|eval|stream` and `leaninfer bench kws`: parse, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path

import typer

kws_app = typer.Typer(
    help="Always-on keyword spotting: synthetic data, RepCNN, SAL, R^2, quantisers, streaming.", no_args_is_help=True
)

QUICK = typer.Option(False, "--quick", help="Use the small smoke-test corpus.")
JSON = typer.Option(None, "--json", help="Also write the result as JSON here.")


def _emit(result: dict, json_path: Path | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text + "\n")
    typer.echo(text)


def _corpus(quick: bool, seed: int = 0) -> dict:
    from leaninfer.streaming.kws.bench import BenchConfig
    from leaninfer.streaming.kws.data import build_corpus

    cfg = BenchConfig.make(quick).data
    cfg.seed = seed
    return build_corpus(cfg)


@kws_app.command("data")
def data(
    quick: bool = QUICK,
    seed: int = typer.Option(0, help="Corpus seed."),
    force: bool = typer.Option(False, help="Re-synthesise even if cached."),
    json_path: Path = JSON,
) -> None:
    """Synthesise (or load from the cache) the espeak-ng KWS corpus and print its size."""
    from leaninfer.streaming.kws.bench import BenchConfig
    from leaninfer.streaming.kws.data import build_corpus

    cfg = BenchConfig.make(quick).data
    cfg.seed = seed
    corpus = build_corpus(cfg, force=force)
    _emit(
        {
            "key": cfg.key(),
            **{
                s: {
                    "clips": int(corpus["clips"][s].labels.numel()),
                    "stream_hours": round(corpus["streams"][s].hours, 3),
                }
                for s in ("train", "val", "test")
            },
        },
        json_path,
    )


@kws_app.command("train")
def train(
    out: Path = typer.Argument(..., help="Checkpoint folder to write."),
    model: str = typer.Option("repcnn", help="repcnn | unibranch | bcresnet | gru"),
    steps: int = 400,
    seed: int = 0,
    reg: str = typer.Option("none", help="R^2: none | linf | margin | smm"),
    reg_lambda: float = 0.02,
    quick: bool = QUICK,
    json_path: Path = JSON,
) -> None:
    """Train a clip classifier and save it (train-time graph)."""
    from leaninfer.streaming.kws.export import save_model
    from leaninfer.streaming.kws.models import ModelConfig
    from leaninfer.streaming.kws.train import TrainConfig, eval_clips, train_clips

    corpus = _corpus(quick)
    m = train_clips(
        ModelConfig(kind=model),
        TrainConfig(steps=steps, seed=seed, reg=reg, reg_lambda=reg_lambda),
        corpus["clips"]["train"],
    )
    save_model(m, out)
    _emit(
        {
            "checkpoint": str(out),
            "val_acc": eval_clips(m, corpus["clips"]["val"]),
            "test_acc": eval_clips(m, corpus["clips"]["test"]),
        },
        json_path,
    )


@kws_app.command("reparam")
def reparam(
    ckpt: Path,
    out: Path,
    onnx: Path = typer.Option(None, help="Also export ONNX here and check it."),
    quick: bool = QUICK,
    json_path: Path = JSON,
) -> None:
    """Fold a RepCNN/unibranch checkpoint into the single-branch inference graph (optionally to ONNX)."""
    import torch

    from leaninfer.streaming.kws.export import check_onnx, export_onnx, load_model, save_model
    from leaninfer.streaming.kws.train import normalise
    from leaninfer.streaming.reparam import reparameterize

    multi = load_model(ckpt)  # a missing or bad checkpoint fails before the corpus is built
    test = _corpus(quick)["clips"]["test"]
    fused = reparameterize(multi)
    x = normalise(multi, test.feats[:64])
    with torch.inference_mode():
        diff = float((multi(x) - fused(x)).abs().max())
    save_model(fused, out, deployed=True)
    result = {"checkpoint": str(out), "max_abs_diff": diff}
    if onnx:
        export_onnx(fused, onnx)
        result.update(onnx=str(onnx), onnx_max_abs_diff=check_onnx(fused, onnx, test.feats[:4]))
    _emit(result, json_path)


@kws_app.command("quantize")
def quantize(
    ckpt: Path,
    out: Path,
    bits: int = 4,
    method: str = typer.Option("uniform", help="uniform | kmeans"),
    quick: bool = QUICK,
    json_path: Path = JSON,
) -> None:
    """Post-training quantise a (folded) checkpoint: per-channel symmetric uniform or k-means palettisation."""
    from leaninfer.streaming.kws.export import load_model, save_model
    from leaninfer.streaming.kws.train import eval_clips
    from leaninfer.streaming.quant import quantize_model

    if method not in ("uniform", "kmeans"):
        raise typer.BadParameter(f"method must be uniform or kmeans, got {method!r}", param_hint="--method")
    if not 1 <= bits <= 16:
        raise typer.BadParameter(f"bits must be in 1..16, got {bits}", param_hint="--bits")
    m = load_model(ckpt)  # a missing or bad checkpoint fails before the corpus is built
    test = _corpus(quick)["clips"]["test"]
    q = quantize_model(m, bits, method)
    q.feat_norm, q.cfg = m.feat_norm, m.cfg
    save_model(q, out, deployed=json.loads((Path(ckpt) / "config.json").read_text())["deployed"])
    _emit(
        {"checkpoint": str(out), "fp_acc": eval_clips(m, test), f"{method}{bits}_acc": eval_clips(q, test)}, json_path
    )


@kws_app.command("eval")
def evaluate(ckpt: Path, quick: bool = QUICK, json_path: Path = JSON) -> None:
    """Test accuracy plus streaming latency and peak memory of a checkpoint."""
    from leaninfer.streaming.kws.export import load_model
    from leaninfer.streaming.kws.train import eval_clips
    from leaninfer.streaming.runtime import measure_stream

    m = load_model(ckpt)  # a missing or bad checkpoint fails before the corpus is built
    test = _corpus(quick)["clips"]["test"]
    acc = eval_clips(m, test)
    _emit({"test_acc": acc, **measure_stream(m, test.feats[:6].reshape(-1, test.feats.shape[-1]))}, json_path)


@kws_app.command("stream")
def stream(
    ckpt: Path,
    index: int = typer.Option(0, help="Which test stream to render."),
    chunk_ms: float = 100.0,
    threshold: float = 0.5,
    quick: bool = QUICK,
    json_path: Path = JSON,
) -> None:
    """Run a clip checkpoint on a rendered test stream through the audio->log-mel->model runtime, chunk by chunk."""
    import torch

    from leaninfer.streaming.kws.bench import BenchConfig
    from leaninfer.streaming.kws.data import CLASSES, WAKE, render_stream
    from leaninfer.streaming.kws.export import load_model
    from leaninfer.streaming.runtime import StreamingRuntime

    m = load_model(ckpt)
    wave, events = render_stream(BenchConfig.make(quick).data, "test", index)

    class _Norm(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg = inner, inner.cfg

        def forward(self, x):
            mean, std = self.inner.feat_norm
            return self.inner((x - mean) / std)

    rt = StreamingRuntime(_Norm(m))
    hop = int(16000 * chunk_ms / 1000)
    pooled = torch.cat(
        [p for _, p in (rt.push_audio(wave[i : i + hop]) for i in range(0, wave.size, hop)) if p.numel()]
    )
    prob = torch.softmax(pooled, -1)[:, CLASSES.index(WAKE)].numpy()
    frame_of = [i * rt.stride + rt.stride - 1 for i in range(prob.size)]  # output i -> its input frame
    fired = [round(frame_of[i] * 0.01 + 0.025, 2) for i in range(1, prob.size) if prob[i] >= threshold > prob[i - 1]]
    _emit(
        {
            "wake_events_s": [round(e["end"], 2) for e in events if e["kind"] == "wake"],
            "fired_s": fired,
            "ms_per_frame_median": 1000 * sorted(rt.step_times)[len(rt.step_times) // 2],
            "ms_per_frame_mean": 1000 * sum(rt.step_times) / max(1, len(rt.step_times)),
            "output_stride": rt.stride,
            "state_kb": rt.state_bytes() / 1024,
        },
        json_path,
    )


def bench_kws(
    quick: bool = typer.Option(False, "--quick", help="Small smoke-test sizes (a few minutes)."),
    json_path: Path = typer.Option(None, "--json", help="Where to write the JSON (default reports/kws.json)."),
    workers: int = typer.Option(1, "--workers", help="Training processes (1 thread each); timing runs alone after."),
) -> None:
    """RepCNN vs unibranch vs BC-ResNet, R^2 + PTQ, SAL vs CE; writes reports/kws.{json,md,png}."""
    import logging

    from leaninfer.streaming.kws.bench import run_bench

    logging.getLogger("leaninfer").setLevel(logging.INFO)
    if workers < 1:
        raise typer.BadParameter("--workers must be >= 1")
    res = run_bench(quick=quick, json_path=json_path, workers=workers)
    typer.echo(json.dumps({"headline": res["headline"], "targets": res["targets"]}, indent=2, default=str))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(kws_app, name="kws")
    bench.command("kws")(bench_kws)
