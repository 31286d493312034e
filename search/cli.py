"""rkd-search: find the most accurate student that fits an operations budget.

    rkd-search --budget 20MFLOPs --trials 200           # search (the default command)
    rkd-search pareto [--output DIR]                    # the front, read back from MLflow
    rkd-search train RUN_ID|--best [--epochs 200]       # the picked student trained to the end, an MLflow model
    rkd-search export RUN_ID [--output DIR] [--int8]    # a front student to ONNX (and TorchScript)
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from . import names
from .budget import UNIT_NOTE, parse_duration
from .errors import SearchError, UsageError
from rkd_search.trainer import defaults
from rkd_search.trainer.losses import describe_losses

from .formats import FORMATS, chosen_formats, describe_formats
from .options import add_flags, from_args

COMMANDS = ("search", "pareto", "train", "export")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


def _tracking_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument("--output", type=Path, help="the search's folder (study, front table and plot); default runs/DATASET-BUDGET-seedN")
    group.add_argument("--tracking-uri", help="MLflow tracking URI (default: mlflow.yaml, else sqlite:///mlflow.db); env MLFLOW_TRACKING_URI")
    group.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml, else rkd-search); env MLFLOW_EXPERIMENT_NAME")
    group.add_argument("--mlflow-config", help="MLflow settings file (default ./mlflow.yaml when present)")


def _search_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rkd-search",
        description="Search student width/depth, graph construction and loss weights under an operations budget; "
                    "every candidate is trained by graph-based relative knowledge distillation and logged to MLflow.",
        epilog=f"Loss terms (a space file's loss: section sets their weights): {describe_losses()}. Other commands: "
               "`rkd-search pareto --help`, `rkd-search train --help`, `rkd-search export --help`.",
    )
    add_flags(parser)  # every option of SearchOptions, declared once in options.py
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    return parser


def _pareto_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rkd-search pareto", description="Print the Pareto front (validation accuracy vs MACs) of a search, read from MLflow.")
    parser.add_argument("--run", help="the search's parent run id (default: the latest search, of --output when given)")
    _tracking_flags(parser)
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rkd-search export", description="Export a trained student (a child run) to ONNX and TorchScript, "
                                                           "with student.json: its input size, channel order, mean, std, classes and costs.")
    parser.add_argument("run_id", metavar="RUN_ID", help="a child run id, e.g. from `rkd-search pareto`")
    parser.add_argument("--format", default="onnx,torchscript", help=f"comma-separated, default onnx,torchscript: {describe_formats()}")
    parser.add_argument("--raw-input", action="store_true", help="bake the normalisation into the model: it takes uint8 images")
    parser.add_argument("--int8", action="store_true", help="also write int8 models (static quantization calibrated on "
                                                            "training images) and measure their test accuracy")
    parser.add_argument("--calibration-images", type=int, default=512, help="training images for int8 calibration (default 512)")
    parser.add_argument("--data-dir", help="the dataset folder, when it moved since the search (default: the search's)")
    parser.add_argument("--cache-dir", type=Path, help="as for the search (env RKD_CACHE_DIR)")
    _tracking_flags(parser)
    return parser


def _train_parser() -> argparse.ArgumentParser:
    from .recipes import DEFAULT_RECIPE, RECIPES
    from .train import ON_CHOICES

    parser = _Parser(prog="rkd-search train", description="Train a student picked from a search's front again, to the end: its "
                     "architecture, the final-training recipe of --recipe, the search's data and teacher, the schedule "
                     "stretched to --epochs; a checkpoint every epoch (rerun the same command to continue), its own MLflow run and an MLflow model.")
    parser.add_argument("run_id", metavar="RUN_ID", nargs="?", help="a trial's run id, e.g. from `rkd-search pareto`")
    parser.add_argument("--best", action="store_true", help="the most accurate learned student on the front of the latest search "
                                                            "(of --output when given)")
    parser.add_argument("--epochs", type=int, default=defaults.FINAL_EPOCHS,
                        help=f"epochs of the final training (default {defaults.FINAL_EPOCHS}, as published CIFAR models train); "
                             "the trial's schedule is stretched to them")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                        help="what the final training changes in the trial's recipe: "
                             + "; ".join(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}: {r.description}"
                                         for name, r in RECIPES.items()))
    parser.add_argument("--on", default="train", choices=ON_CHOICES,
                        help="train (default; the validation split stays for a validation figure) or train+val (more images, "
                             "no validation figure)")
    parser.add_argument("--register", metavar="NAME", help="add the trained model to the MLflow Model Registry as NAME, alias champion")
    parser.add_argument("--timeout", help="stop after the epoch that passes this long (e.g. 2h, 90m), keeping the checkpoint; "
                                          "rerun to continue")
    parser.add_argument("--no-int8", action="store_true", help="skip measuring the int8 (ONNX Runtime) export's test accuracy")
    parser.add_argument("--calibration-images", type=int, default=512, help="training images for the int8 calibration (default 512)")
    parser.add_argument("--data-dir", help="the dataset folder, when it moved since the search (default: the search's)")
    parser.add_argument("--cache-dir", type=Path, help="as for the search (env RKD_CACHE_DIR)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _tracking_flags(parser)
    return parser


def _configure_logging(verbose: bool) -> None:
    # MLflow configures its own loggers when imported, from these variables: set them first
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    # MLflow logs every database error with its traceback before raising it; a locked store's are
    # waited out (tracking.PatientClient), and any other reaches the user as its exception
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def _search(argv: list[str]) -> int:
    args = _search_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from .driver import run_search

    run_search(from_args(args))
    return 0


def _tracker(args):
    from .tracking import Tracker, check_reachable, resolve_settings

    settings = resolve_settings(args.mlflow_config, args.tracking_uri, args.experiment)
    check_reachable(settings, create=False)
    return Tracker(settings)


def _pareto(argv: list[str]) -> int:
    args = _pareto_parser().parse_args(argv)
    _configure_logging(False)
    from .pareto import compute_front
    from .report import front_table

    tracker = _tracker(args)
    parent = args.run or tracker.latest_search(str(args.output.resolve()) if args.output else None)
    records = tracker.trial_records(parent)
    front = compute_front(records)  # the tags say the same once written; this also covers a running search
    parent_run = tracker.client.get_run(parent)
    val_size = int(parent_run.data.params.get("val.size", 0)) or None
    print(f"Search {parent_run.info.run_name} ({parent}), {len(records)} trials, budget {parent_run.data.params.get('budget', '?')}, "
          f"in {UNIT_NOTE}:")
    print(front_table(front, val_size, records))
    return 0


def _train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    _configure_logging(False)
    from .train import TrainOptions, check_options, run_train

    options = TrainOptions(args.run_id, best=args.best, epochs=args.epochs, recipe=args.recipe, on=args.on, output=args.output,
                           register=args.register, timeout=parse_duration(args.timeout) if args.timeout else None,
                           int8=not args.no_int8, calibration_images=args.calibration_images, data_dir=args.data_dir,
                           cache_dir=args.cache_dir, device=args.device, progress=not args.no_progress)
    check_options(options)  # the flags first: a wrong --epochs is said before the store is looked for
    training = run_train(options, _tracker(args))
    name = training.student.name
    if training.already:
        print(f"{name} was already trained for {args.epochs} epochs on {args.on} with --recipe {args.recipe}: run "
              f"{training.run_id}; export it with rkd-search export {training.run_id}")
        return 0
    if training.result is None:
        return 0  # stopped by --timeout: said so, the checkpoint kept
    result, metrics = training.result, training.metrics
    trial = training.student.run.data
    validation = "no validation figure (trained on train+val)" if args.on == "train+val" else f"val acc {result.val_acc:.4f}"
    print(f"trained {name} for {result.epochs_done} epochs on {args.on} (--recipe {args.recipe}): test acc "
          f"{result.test_acc:.4f}, {validation}, teacher agreement {result.teacher_agreement:.4f} (the trial: test acc "
          f"{trial.metrics.get('test_acc', float('nan')):.4f} after {trial.tags.get(names.EPOCHS, '?')} epochs)")
    if "int8_test_acc" in metrics:
        print(f"  int8 (ONNX Runtime, static, per-channel): test acc {metrics['int8_test_acc']:.4f} (fp32 ONNX {metrics['onnx_test_acc']:.4f})")
    print(f"  MLflow run {training.run_id}; model {training.model_uri} (mlflow.pytorch.load_model)")
    if training.version:
        print(f"  registered as {args.register} version {training.version}, alias champion: models:/{args.register}@champion")
    print(f"  checkpoints: {training.folder}")
    print(f"Next: rkd-search export {training.run_id} --int8 --raw-input (add --format litert for a microcontroller)")
    return 0


def _export(argv: list[str]) -> int:
    args = _export_parser().parse_args(argv)
    _configure_logging(False)
    from .export import export_student

    chosen = chosen_formats(args.format)
    if (args.int8 or args.raw_input) and not any(f.quantizes for f in chosen):
        quantizing = " and ".join(name for name, f in FORMATS.items() if f.quantizes)
        raise UsageError(f"--int8 and --raw-input apply to {quantizing}: keep one of them in --format")
    if args.calibration_images < 1:
        raise UsageError("--calibration-images must be at least 1")
    tracker = _tracker(args)
    try:
        name = tracker.client.get_run(args.run_id).info.run_name
    except Exception:
        raise UsageError(f"no MLflow run {args.run_id!r} at {tracker.settings.tracking_uri}: pass a run id from `rkd-search pareto`") from None
    folder = (args.output or Path(".")) / "exports" / name
    exported = export_student(tracker, args.run_id, folder, args.format, raw_input=args.raw_input, int8=args.int8,
                              calibration_images=args.calibration_images, data_dir=args.data_dir, cache_dir=args.cache_dir)
    summary = exported.summary
    val = f"val acc {summary['val_acc']:.4f}, " if summary.get("val_acc") is not None else ""
    print(f"exported {summary['student']} ({summary['macs']:,} MACs, {summary['params']:,} params, "
          f"{val}test acc {summary['test_acc']:.4f}) from run {args.run_id}: {exported.weights}")
    for kind, path in exported.files.items():
        print(f"  {kind}: {path}")
    for kind, accuracy in exported.accuracy.items():
        print(f"  test accuracy, {kind}: {accuracy:.4f}")
    litert = summary.get("litert") or {}
    if litert.get("float_ops"):
        print(f"  note: the int8 LiteRT model is not fully integer: {', '.join(litert['float_ops'])} run in float32 "
              "(the converter left them unquantized); TFLite Micro runs them, with float buffers in its arena")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "search"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    try:
        if argv and command == "search" and not argv[0].startswith("-"):
            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f"did you mean `rkd-search {close[0]}`? " if close else ""
            raise UsageError(f"unknown command {argv[0]!r}: {hint}the commands are {', '.join(COMMANDS)}; "
                             "a search takes flags only (rkd-search --budget 20MFLOPs ...)")
        return {"search": _search, "pareto": _pareto, "train": _train, "export": _export}[command](argv)
    except UsageError as error:
        print(f"rkd-search: error: {error}", file=sys.stderr)
        return 2
    except SearchError as error:
        print(f"rkd-search: the search failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> int:
    """The ``rkd-search`` command: a process of its own, which has imported PyTorch and computed
    nothing yet, so the search's first workers may be forked from it instead of importing afresh.
    ``kill -USR1 PID`` prints the stack of each of its threads to stderr (a search that seems stuck)."""
    import faulthandler

    from .backends.local.worker import fresh_process

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    fresh_process()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
