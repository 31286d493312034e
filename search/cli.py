"""rkd-search: find the most accurate student that fits an operations budget.

    rkd-search --budget 20MFLOPs --trials 200           # search (the default command)
    rkd-search pareto [--output DIR]                    # the front, read back from MLflow
    rkd-search export RUN_ID [--output DIR]             # a front student to TorchScript / ONNX
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from trainer import DATASETS

from .budget import UNIT_NOTE, parse_budget
from .driver import BACKENDS, SAMPLERS, SearchOptions
from .errors import UsageError

COMMANDS = ("search", "pareto", "export")


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
        epilog="Other commands: `rkd-search pareto --help`, `rkd-search export --help`.",
    )
    parser.add_argument("--budget", required=True, help=f"operations budget per image, e.g. 20MFLOPs, 20M, 1.5GMACs, 500k; counted in {UNIT_NOTE}")
    parser.add_argument("--trials", type=int, default=200, help="trials in the study, including over-budget candidates (default 200); a rerun runs only the missing ones")
    data = parser.add_argument_group("data and teacher")
    data.add_argument("--dataset", default="cifar10", choices=[d for d in DATASETS if d != "synthetic"], help="default cifar10")
    data.add_argument("--data-dir", default=os.environ.get("RKD_DATA_DIR"), help="dataset folder (env RKD_DATA_DIR); CIFAR is downloaded there when the network allows")
    data.add_argument("--teacher", default="wrn28_1", help="a checkpoint file, or an architecture (e.g. wrn28_1) trained once and cached (default wrn28_1)")
    data.add_argument("--teacher-epochs", type=int, default=30, help="epochs to train the teacher when it is not a file (default 30)")
    data.add_argument("--trust-teacher-code", action="store_true", help="allow a teacher file whose loading runs pickled code")
    data.add_argument("--cache-dir", type=Path, help="teachers, teacher targets and decoded datasets (env RKD_CACHE_DIR, default ~/.cache/rkd-search)")
    trials = parser.add_argument_group("trials")
    trials.add_argument("--epochs", type=int, default=15, help="training epochs per student (default 15)")
    trials.add_argument("--batch-size", type=int, default=None, help="default 128 (32 for digits)")
    trials.add_argument("--space", default="default", help="a built-in space (default, wrn) or a YAML file")
    trials.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    trials.add_argument("--seed", type=int, default=0)
    trials.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto (default): bf16 autocast on CUDA, fp32 on the CPU (bf16 cost accuracy there: docs/benchmarks.md)")
    trials.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    _tracking_flags(parser)
    backend = parser.add_argument_group("back-end")
    backend.add_argument("--backend", default="optuna", choices=BACKENDS, help="optuna: in this process (default); ray: Ray Tune, local or on a cluster")
    backend.add_argument("--address", default=None, help="Ray cluster address HOST:PORT (or env RAY_ADDRESS); without it a local Ray starts")
    backend.add_argument("--trial-resources", default="", help="per-trial Ray resources, e.g. cpu=2,gpu=0.5 (default: all CPUs of the smallest node, one trial per node)")
    backend.add_argument("--max-concurrent", type=int, default=None, help="trials running at once on Ray (default: as resources allow)")
    backend.add_argument("--storage-path", default=None, help="Ray experiment storage; must be shared (NFS path or URI) on a multi-node cluster")
    backend.add_argument("--multi-fidelity", action="store_true", help="Ray: stop weak trials early with ASHA on validation accuracy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    return parser


def _pareto_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rkd-search pareto", description="Print the Pareto front (validation accuracy vs MACs) of a search, read from MLflow.")
    parser.add_argument("--run", help="the search's parent run id (default: the latest search, of --output when given)")
    _tracking_flags(parser)
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rkd-search export", description="Export a trained student (a child run) to TorchScript, and to ONNX where onnx is installed.")
    parser.add_argument("run_id", metavar="RUN_ID", help="a child run id, e.g. from `rkd-search pareto`")
    parser.add_argument("--format", default="torchscript,onnx", help="comma-separated: torchscript, onnx (default both)")
    _tracking_flags(parser)
    return parser


def _parse_resources(text: str) -> dict[str, float]:
    resources = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            resources[key.strip().lower()] = float(value)
        except ValueError:
            raise UsageError(f"--trial-resources {text!r}: write KEY=NUMBER pairs, e.g. cpu=2,gpu=0.5") from None
    unknown = set(resources) - {"cpu", "gpu"}
    if unknown:
        raise UsageError(f"--trial-resources: unknown resource {sorted(unknown)[0]!r} (use cpu and gpu)")
    return resources


def _configure_logging(verbose: bool) -> None:
    # MLflow configures its own loggers when imported, from these variables: set them first
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def _search(argv: list[str]) -> int:
    args = _search_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from .driver import run_search

    options = SearchOptions(
        budget=parse_budget(args.budget), trials=args.trials, dataset=args.dataset, data_dir=args.data_dir,
        teacher=args.teacher, teacher_epochs=args.teacher_epochs, trust_teacher_code=args.trust_teacher_code,
        epochs=args.epochs, batch_size=args.batch_size, space=args.space, sampler=args.sampler, seed=args.seed,
        output=args.output, experiment=args.experiment, tracking_uri=args.tracking_uri, mlflow_config=args.mlflow_config,
        backend=args.backend, cache_dir=args.cache_dir, precision=args.precision, device=args.device,
        progress=not args.no_progress, address=args.address, trial_resources=_parse_resources(args.trial_resources),
        max_concurrent=args.max_concurrent, storage_path=args.storage_path, multi_fidelity=args.multi_fidelity,
    )
    run_search(options)
    return 0


def _tracker(args):
    from .tracking import Tracker, check_reachable, resolve_settings

    settings = resolve_settings(args.mlflow_config, args.tracking_uri, args.experiment)
    check_reachable(settings, create=False)
    return Tracker(settings)


def _pareto(argv: list[str]) -> int:
    args = _pareto_parser().parse_args(argv)
    _configure_logging(False)
    from .report import compute_front, front_table

    tracker = _tracker(args)
    parent = args.run or tracker.latest_search(str(args.output.resolve()) if args.output else None)
    records = tracker.trial_records(parent)
    tagged = [r for r in records if r.pareto is not None]
    if tagged and len(tagged) == len(records):
        front = sorted((r for r in records if r.pareto), key=lambda r: (r.metrics.get("macs", 0), -r.metrics.get("val_acc", 0)))
    else:  # a search still running or interrupted: tags not written yet
        front = compute_front(records)
    parent_run = tracker.client.get_run(parent)
    print(f"Search {parent_run.info.run_name} ({parent}), {len(records)} trials, budget {parent_run.data.params.get('budget', '?')}, "
          f"in {UNIT_NOTE}:")
    print(front_table(front))
    return 0


def _export(argv: list[str]) -> int:
    args = _export_parser().parse_args(argv)
    _configure_logging(False)
    from .export import export_student

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if not formats or set(formats) - {"torchscript", "onnx"}:
        raise UsageError(f"--format {args.format!r}: choose from torchscript, onnx")
    tracker = _tracker(args)
    try:
        name = tracker.client.get_run(args.run_id).info.run_name
    except Exception:
        raise UsageError(f"no MLflow run {args.run_id!r} at {tracker.settings.tracking_uri}: pass a run id from `rkd-search pareto`") from None
    folder = (args.output or Path(".")) / "exports" / name
    written = export_student(tracker, args.run_id, folder, formats)
    import json

    summary = json.loads(written["json"].read_text())
    print(f"exported {summary['student']} ({summary['macs']:,} MACs, {summary['params']:,} params, "
          f"val acc {summary['val_acc']:.4f}) from run {args.run_id}:")
    for kind, path in written.items():
        print(f"  {kind}: {path}")
    if "onnx" in formats and "onnx" not in written:
        print("  onnx: skipped (pip install onnx to export it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "search"
    if argv and argv[0] in COMMANDS:
        argv = argv[1:]
    try:
        return {"search": _search, "pareto": _pareto, "export": _export}[command](argv)
    except UsageError as error:
        print(f"rkd-search: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
