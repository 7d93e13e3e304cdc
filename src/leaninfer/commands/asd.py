"""`leaninfer asd ...` (data, train, stream) and `leaninfer bench asd`: thin wrappers over leaninfer.streaming.asd."""

from __future__ import annotations

from pathlib import Path

import typer

asd_app = typer.Typer(help="Real-time active speaker detection (synthetic AV benchmark, band-limited transformers).",
                      no_args_is_help=True)


def _opt_int(value: str, name: str = "value") -> int | None:
    if value.lower() in ("inf", "none", ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{name} must be an integer or 'inf', got {value!r}", param_hint=f"--{name}") from None


@asd_app.command("data")
def data_cmd(train_scenes: int = typer.Option(160, help="training scenes (3 face tracks each)"),
             test_scenes: int = typer.Option(80, help="test scenes"),
             frames: int = typer.Option(200, help="frames per scene (25 fps)"),
             seed: int = typer.Option(0), preview: Path | None = typer.Option(None, help="write a PNG of frames")):
    """Render (or load from cache) the synthetic audio-visual benchmark."""
    from leaninfer.streaming.asd.data import SynthConfig, synthetic

    for split, n in (("train", train_scenes), ("test", test_scenes)):
        d = synthetic(SynthConfig(split=split, n_scenes=n, frames=frames, seed=seed))
        typer.echo(f"{split}: {len(d)} face tracks x {d.frames} frames, speaking {100 * d.labels.mean():.1f}% "
                   f"of face-frames, audio (log-mel) {tuple(d.mel.shape)}")
        if preview is not None and split == "test":
            _preview(d, preview)
            typer.echo(f"preview: {preview}")


def _preview(d, path: Path) -> None:
    from leaninfer.bench.report import write_plot

    def draw(ax):
        fig = ax.figure
        ax.remove()
        axes = fig.subplots(3, 8)
        for k in range(3):
            for j in range(8):
                a = axes[k, j]
                a.imshow(d.faces[k, j * 4], cmap="gray", vmin=0, vmax=255)
                a.set_title(f"face {k} t={j * 4} y={d.labels[k, j * 4]}", fontsize=6)
                a.axis("off")

    write_plot(path, draw, figsize=(10, 4))


@asd_app.command("train")
def train_cmd(kind: str = typer.Option("band", help="band | gru_uni | gru_bi"),
              past: str = typer.Option("16", help="past frames P per layer (inf = unbounded)"),
              future: str = typer.Option("2", help="look-ahead frames F (inf = whole clip)"),
              ava_root: Path | None = typer.Option(None, help="AVA-ActiveSpeaker folder (see docs/asd.md)"),
              train_scenes: int = typer.Option(160, min=1), test_scenes: int = typer.Option(80, min=1),
              front_steps: int = typer.Option(400, min=1), epochs: int = typer.Option(30, min=1),
              crop: int = typer.Option(100, help="back-end training crop in frames (0 = whole tracks)"),
              seed: int = 0, out: Path | None = typer.Option(None, help="checkpoint path")):
    """Train front end + one back end; print test mAP and save a checkpoint."""
    import numpy as np
    import torch

    from leaninfer.paths import cache_dir
    from leaninfer.streaming.asd.data import SynthConfig, synthetic
    from leaninfer.streaming.asd.models import ASDModel, BackendConfig
    from leaninfer.streaming.asd.train import (
        TrainConfig,
        backend_scores,
        embed,
        evaluate,
        save_model,
        train_backend,
        train_front,
    )

    try:  # every option is checked before any data is rendered or any front end trained
        bcfg = BackendConfig(kind=kind, past=_opt_int(past, "past"), future=_opt_int(future, "future"))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if ava_root is not None and not Path(ava_root).is_dir():
        raise typer.BadParameter(f"no such folder: {ava_root}", param_hint="--ava-root")
    torch.set_num_threads(1)
    if ava_root is not None:
        from leaninfer.streaming.asd.ava import load_ava

        train, test = load_ava(ava_root, "train"), load_ava(ava_root, "val")
    else:
        train = synthetic(SynthConfig(split="train", n_scenes=train_scenes, seed=seed))
        test = synthetic(SynthConfig(split="test", n_scenes=test_scenes, seed=seed))
    tcfg = TrainConfig(front_steps=front_steps, backend_epochs=epochs, seed=seed, backend_crop=crop or None)
    front = train_front(train, tcfg, progress=True)
    backend = train_backend(embed(front, train), torch.from_numpy(train.labels.astype(np.int64)), bcfg, tcfg)
    score = evaluate(backend_scores(backend, embed(front, test)), torch.from_numpy(test.labels.astype(np.int64)))
    out = out or cache_dir("asd", "models") / f"{bcfg.name()}.pt"
    save_model(ASDModel(front, backend), out)
    typer.echo(f"{bcfg.name()}: test mAP {score:.2f}; saved {out}")


@asd_app.command("stream")
def stream_cmd(checkpoint: Path = typer.Argument(..., exists=True, dir_okay=False, help="a saved ASD model"),
               frames: int = typer.Option(400, min=1, help="frames to stream"),
               profile: bool = typer.Option(True, help="time each section")):
    """Stream random frames through a saved model: per-frame latency, state memory, section profile."""
    from leaninfer.streaming.asd.cost import measure_stream
    from leaninfer.streaming.asd.train import load_model

    try:
        model = load_model(checkpoint)
    except Exception as e:  # noqa: BLE001 - any failure to read it means "not a checkpoint"
        raise typer.BadParameter(f"{checkpoint} is not an ASD checkpoint ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})", param_hint="CHECKPOINT") from None
    res = measure_stream(model, frames=frames, profile=profile)
    for k, v in res.items():
        typer.echo(f"{k}: {v}")


@asd_app.command("report")
def report_cmd(json_path: Path = typer.Argument(Path("reports/asd.json"), exists=True, dir_okay=False,
                                                help="results of `leaninfer bench asd`"),
               seeds: list[Path] = typer.Option([], "--seed-run", exists=True, dir_okay=False,
                                                help="JSON of a rerun with another seed")):
    """Redraw reports/asd.md and reports/asd.png from a saved results JSON (plus seed reruns, if given)."""
    from leaninfer.streaming.asd.bench import reports_from_json

    try:
        paths = reports_from_json(json_path, seeds)
    except (ValueError, KeyError, TypeError) as e:
        raise typer.BadParameter(f"{json_path} (or a --seed-run file) is not a results JSON of `leaninfer bench asd` "
                                 f"({type(e).__name__}: {e})") from None
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


def bench_asd(quick: bool = typer.Option(False, "--quick", help="small smoke run (a few minutes)"),
              json_path: Path | None = typer.Option(None, "--json", help="results JSON (default reports/asd.json)"),
              seed: int = typer.Option(0)):
    """mAP over a (P, F) grid vs GRU baselines, streaming latency/memory; writes reports/asd.{json,md,png}."""
    from leaninfer.streaming.asd.bench import bench

    res = bench(quick=quick, json_path=json_path, seed=seed)
    h = res["payload"]["headline"]
    typer.echo(f"uni-GRU {h['gru_uni_map']:.2f}  bi-GRU {h['gru_bi_map']:.2f}  "
               f"full transformer {h['full_transformer_map']:.2f}")
    for k, v in h["map_grid"].items():
        typer.echo(f"P,F={k}: mAP {v:.2f}  {h['ms_per_frame_grid'][k]:.3f} ms/frame  {h['peak_kb_grid'][k]:.1f} KiB")
    typer.echo(f"wrote {res['json']}, {res['md']}, {res['png']}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(asd_app, name="asd")
    bench.command("asd")(bench_asd)
