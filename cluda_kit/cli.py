"""The ``cluda-kit`` command (also ``python -m cluda_kit``, and under ``torchrun -m cluda_kit``).

    cluda-kit train CONFIG [--set key=value ...] [--out RUN_DIR] [--overwrite]
    cluda-kit train --resume RUN_DIR [--set train.max_iters=N]
    cluda-kit evaluate MODEL [--config PRESET] [--dataset NAME --root DIR] [--split S] [--teacher]
                       [--save-predictions DIR]
    cluda-kit predict CHECKPOINT INPUT... --out DIR [--teacher] [--batch-size N] [--every K] [--overwrite]
    cluda-kit export MODEL --format {safetensors,onnx} --out FILE [--teacher] [--size H W]
    cluda-kit presets
    cluda-kit pretrain [--out FILE] [--iters N] [--classes C] [--seed S] ...
    cluda-kit prepare {gta,synthia,cityscapes} ROOT [--workers N] [--overwrite] ...

Mistakes in the command line, the config, or the data give one line naming the culprit, not a
traceback (``--debug`` shows the traceback); so does a write the file system refuses (a full disk,
no permission), which leaves what was written before intact (tests/test_bad_inputs.py tabulates
them). ``predict`` and ``prepare`` go on past a bad file: each is reported in one line, a summary
follows, and the exit status is 1 when any failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _train(args: argparse.Namespace) -> int:
    from .analysis.callbacks import DebugFigures
    from .config import load_config
    from .engine.trainer import Trainer, print_summary

    callbacks = [DebugFigures()]  # figures/ every train.figure_every iterations
    if args.resume:
        if args.config:
            raise UsageError("train: give either CONFIG or --resume RUN_DIR, not both")
        trainer = Trainer.resume(args.resume, overrides=args.set, callbacks=callbacks)
    else:
        if not args.config:
            raise UsageError("train: give a preset name or a YAML path (see `cluda-kit presets`)")
        cfg = load_config(args.config, overrides=args.set)
        out = args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        trainer = Trainer(cfg, out, overwrite=args.overwrite, callbacks=callbacks)
    if trainer.dist.is_main:
        print(f"run directory: {trainer.out_dir}  (device {trainer.device}, "
              f"iteration {trainer.iter} of {trainer.cfg.train.max_iters})", flush=True)
        print(f"method: {trainer.method.describe()}", flush=True)
    summary = trainer.fit()
    if trainer.dist.is_main:
        print(f"\n{trainer.cfg.name}: {summary['iter']} iterations in "
              f"{summary['wall_time_s']:.0f} s ({summary['iters_per_s']:.2f} it/s); "
              f"per-class IoU on {trainer.cfg.data.val.name}:{trainer.cfg.data.val.domain} "
              f"{trainer.cfg.data.val.split}:")
        print(print_summary(summary))
        print(f"summary: {trainer.out_dir / 'summary.json'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from .engine.evaluate import subset_mious
    from .engine.trainer import print_summary
    from .inference import evaluate_model, load_model, save_val_predictions

    overrides = list(args.set)
    for flag, key in ((args.dataset, "name"), (args.root, "root"), (args.split, "split")):
        if flag is not None:
            overrides.append(f"data.val.{key}={flag}")
    if args.dataset not in (None, "miniscapes"):
        overrides.append("data.val.length=null")  # a miniscapes scene count means nothing there
    model = load_model(args.run, teacher=args.teacher, config=args.config, overrides=overrides,
                       device=_device(args.device))
    cfg = model.cfg
    val = cfg.data.val
    where = f"{val.name}" + (f":{val.domain}" if val.name == "miniscapes" else f" {val.root}")
    print(f"model: {model.source} | val: {where} {val.split} ({model.mode} inference)", flush=True)
    callback, written = None, []
    if args.save_predictions:
        def callback(batch, pred):
            written.extend(save_val_predictions(pred.cpu(), batch["name"], args.save_predictions, model.table))

    res = evaluate_model(model, callback=callback)
    summary = {"miou": 100.0 * float(res["miou"]),
               **{k: 100.0 * v for k, v in subset_mious(res["cm"], cfg.data.source.name).items()},
               "iou": {c: 100.0 * float(v) for c, v in zip(model.class_names, res["iou"])}}
    print(print_summary(summary, model.class_names))
    if val.resize is not None and not val.resize_label:
        # the papers' protocol above (prediction upsampled to the full-resolution labels); also the
        # score against labels resized with the image, which differs, so that a number measured
        # the cheaper way can be compared
        model.cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, val=dataclasses.replace(val, resize_label=True)))
        small = evaluate_model(model)
        print(f"mIoU {100.0 * float(res['miou']):.2f} against the full-resolution labels (the papers' "
              f"protocol, above); {100.0 * float(small['miou']):.2f} against labels resized with the "
              f"image to fit {tuple(val.resize)}")
    if args.save_predictions:
        print(f"wrote {len(written)} prediction files to {args.save_predictions}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import collect_inputs, load_model, predict_files

    if args.batch_size < 1 or args.every < 1:
        raise UsageError(f"predict: --batch-size and --every must be >= 1; got {args.batch_size}, {args.every}")
    inputs = collect_inputs(args.inputs)  # checks every input before the model loads
    model = load_model(args.checkpoint, teacher=args.teacher, device=_device(args.device))
    print(f"model: {model.source} ({model.mode} inference"
          + (f", resized to fit {model.resize}" if model.resize else "") + f", on {model.device})")
    report = predict_files(model, inputs, args.out, batch_size=args.batch_size, every=args.every,
                           overwrite=args.overwrite)
    kinds = [kind for kind, _, _ in report.values]
    frames = sum(n for _, _, n in report.values)
    print(f"wrote {kinds.count('image')} image(s) and {kinds.count('video')} video(s) ({frames} frames) "
          f"to {args.out}: *_color.png, *_overlay.png, *_labelIds.png"
          + (", *_overlay.mp4 and frame labelIds" if inputs.videos else ""))
    print(f"predict: {report.summary()}" + ("; --overwrite redoes what was done" if report.skipped else ""))
    return report.exit_code


def _device(name: str | None):
    """``--device`` or, when not given, CUDA where available (``runtime.resolve_device``)."""
    from .runtime import resolve_device

    return resolve_device(name or "auto", key="--device")


def _pretrain(args: argparse.Namespace) -> int:
    import shlex

    from .engine.pretrain import PretrainConfig, pretrain_encoder, save_encoder

    cfg = PretrainConfig(encoder=args.encoder, num_classes=args.classes, iters=args.iters,
                         batch_size=args.batch_size, size=args.size, lr=args.lr, seed=args.seed,
                         threads=args.threads)
    if cfg.iters < 1 or cfg.num_classes < 2 or cfg.batch_size < 1 or cfg.size < 32:
        raise UsageError(f"pretrain: need --iters >= 1, --classes >= 2, --batch-size >= 1 and "
                         f"--size >= 32; got {cfg.iters}, {cfg.num_classes}, {cfg.batch_size}, {cfg.size}")
    encoder, record = pretrain_encoder(cfg, device=args.device)
    command = "cluda-kit pretrain " + shlex.join(args.argv)
    record = save_encoder(encoder, args.out, record, command=command)
    print(f"held-out top-1 accuracy {100 * record['heldout_top1_accuracy']:.1f} % "
          f"(chance {100 * record['chance_accuracy']:.1f} %) after {cfg.iters} iterations in "
          f"{record['train_wall_s']:.0f} s")
    print(f"wrote {args.out} ({record['bytes'] / 2**20:.1f} MiB, sha256 {record['sha256'][:12]}) "
          f"and its record {args.out}.json")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from .presets import preset_lines

    print("\n".join(preset_lines()))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data.prepare import main as prepare_main

    return prepare_main(args.dataset, [args.root, *args.options])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cluda-kit", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset or a YAML config (or resume a run)")
    t.add_argument("config", nargs="?", help="preset name or path to a YAML file")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_iters=100 (repeatable)")
    t.add_argument("--out", help="run directory (default runs/<preset>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an existing --out")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="print the per-class IoU table of a model on a val set")
    e.add_argument("run", metavar="MODEL", help="run directory, kit checkpoint (.pt), exported "
                   ".safetensors, or a released DAFormer/HRDA/MIC/CLUDA checkpoint (with --config)")
    e.add_argument("--config", default=None,
                   help="preset or YAML building the network of a released checkpoint")
    e.add_argument("--dataset", default=None, choices=["miniscapes", "gta", "synthia", "cityscapes"],
                   help="val dataset (default: the model's data.val)")
    e.add_argument("--root", default=None, help="prepared root of that dataset")
    e.add_argument("--split", default=None, help="val split to use (default: the model's)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the inference protocol, e.g. --set train.eval_mode=slide")
    e.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--save-predictions", metavar="DIR",
                   help="also write predictions (Cityscapes labelId PNGs for Cityscapes data)")
    e.set_defaults(func=_evaluate)

    pd = sub.add_parser("predict", help="segment images, folders and videos with a trained model")
    pd.add_argument("checkpoint", help="run directory, kit checkpoint (.pt) or exported .safetensors")
    pd.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files, folders (searched recursively) or video files")
    pd.add_argument("--out", required=True, help="output folder (mirrors the input tree)")
    pd.add_argument("--teacher", action="store_true", help="use the EMA teacher's weights")
    pd.add_argument("--batch-size", type=int, default=1, help="images forwarded together")
    pd.add_argument("--every", type=int, default=1, help="segment every K-th video frame")
    pd.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pd.add_argument("--overwrite", action="store_true",
                    help="redo inputs whose outputs exist (by default a rerun skips them)")
    pd.set_defaults(func=_predict)

    from .export import add_parser as add_export_parser  # imports no torch

    add_export_parser(sub)

    ps = sub.add_parser("presets", help="list the shipped presets")
    ps.set_defaults(func=_presets)

    pt = sub.add_parser("pretrain", help="pretrain an encoder on fractal categories (the demo's "
                                             "stand-in for ImageNet weights)")
    pt.add_argument("--out", default="cluda_kit/weights/mit_nano_fractal.pt",
                    help="weights file to write (its provenance record goes to FILE.json)")
    pt.add_argument("--encoder", default="mit_nano")
    pt.add_argument("--classes", type=int, default=100, help="fractal categories")
    pt.add_argument("--iters", type=int, default=2000)
    pt.add_argument("--batch-size", type=int, default=64)
    pt.add_argument("--size", type=int, default=64, help="image side in pixels")
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--threads", type=int, default=None)
    pt.add_argument("--device", default="cpu")
    pt.set_defaults(func=_pretrain)

    pr = sub.add_parser("prepare", help="convert a raw dataset download in place")
    pr.add_argument("dataset", choices=["gta", "synthia", "cityscapes"])
    pr.add_argument("root")
    pr.add_argument("options", nargs=argparse.REMAINDER,
                    help="options of data_scripts/prepare_DATASET.py: --workers N, --overwrite, ...")
    pr.set_defaults(func=_prepare)

    return p


def _user_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(errors of the input: config, data, checkpoints; errors of a run: a non-finite loss, the
    file system refusing a write: a full disk, no permission, a file where a folder should be),
    imported only when an error is being handled so that `cluda-kit presets` does not load torch."""
    from .config import ConfigError
    from .data.datasets import DatasetError
    from .engine.trainer import CheckpointError, NonFiniteLossError
    from .fileio import UnsafeCheckpointError
    from .inference import InputError
    from .models.weights import WeightsMismatchError

    return (ConfigError, UsageError, FileNotFoundError, DatasetError, CheckpointError, InputError,
            UnsafeCheckpointError, WeightsMismatchError), (
        NonFiniteLossError, OSError)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; for an error re-raised from a DataLoader worker (whose
    message carries the worker's traceback), the original message."""
    from .models.weights import WeightsMismatchError

    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = str(err)
    if isinstance(err, WeightsMismatchError):  # the next lines list tensor names
        return text.splitlines()[0] + " (--debug lists them)"
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        head, sep, rest = last.partition(": ")
        text = rest if sep and head.split(".")[-1] == type(err).__name__ else last
    return " ".join(text.split())


def _close_progress_bars() -> None:
    """End the progress bars an error left open, so that its line starts a line of its own rather
    than following the bar's last state (and the bar is not redrawn after it)."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting slow a shared or small CPU down many times over
    # (a 0.4 s step took 7 s on a loaded 2-core machine); it must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    args = build_parser().parse_args(argv)
    args.argv = argv[command + 1:] if command is not None else []
    try:
        return args.func(args)
    except (UsageError, OSError, ValueError, RuntimeError) as err:
        # mistakes in the input print one line (status 2), a run stopped by a non-finite loss or
        # by the file system too (status 1); a crash mid-training leaves the last checkpoint intact
        input_errors, run_errors = _user_errors()
        if args.debug or not isinstance(err, input_errors + run_errors):
            raise
        _close_progress_bars()
        print(f"cluda-kit: error: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, input_errors) else 1
    except KeyboardInterrupt:
        print("cluda-kit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
