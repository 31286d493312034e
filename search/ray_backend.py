"""The distributed back-end: the same objective as a Ray Tune trainable, searched by OptunaSearch.

- The define-by-run function is ``Objective.define`` (the same space function and the same budget
  constraint as the Optuna back-end); it runs on the driver, which keeps each trial's plan.
- The trainable calls ``Objective.train``. The dataset tensors and the teacher targets reach the
  workers once, through the object store (``tune.with_parameters``), never re-read or recomputed.
- Every MLflow write happens on the driver, in a Tune callback: workers need no access to the
  tracking store, and the runs, names, metrics, tags and artifacts are those of the Optuna back-end.
- Fidelity: a trial reports ``val_acc`` after every epoch (ASHA reads it) and only its last report
  is marked final. A trial stopped early reaches Optuna as PRUNED, not COMPLETE with truncated
  metrics, and is tagged ``pruned`` in MLflow, so it never enters the Pareto front.
- Resume: the study lives in the journal file under ``--output``, as with the Optuna back-end; a
  rerun starts a new Tune experiment that asks the same study only for the missing trials.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from spaces import TrialPlan
from trainer import EpochReport, TrainConfig, TrainResult

from .driver import STUDY_NAME, Search
from .errors import UsageError
from .objective import DIRECTIONS, OBJECTIVES, Objective

log = logging.getLogger(__name__)

FINAL = "rkd_final"
_URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://", "az://", "file://")


# -- the trainable: runs in a Ray worker ------------------------------------------------------------

def train_trial(config: dict[str, Any], data=None, targets=None) -> None:
    """One trial in a Ray worker: report per-epoch validation accuracy, then the final result and weights."""
    import ray
    import torch
    from ray import tune

    node = ray.get_runtime_context().get_node_id()
    plan = config["rkd"]
    if not plan["feasible"]:  # over budget: never trained, the sampler still learns its MACs
        tune.report({"val_acc": 0.0, "macs": float(plan["macs"]), FINAL: True, "rkd_node": node})
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    train_config = TrainConfig.from_dict(plan["config"])

    def report(epoch_report: EpochReport) -> None:
        if epoch_report.epoch < epoch_report.epochs:  # the last epoch goes out with the final result
            tune.report({"val_acc": epoch_report.val_acc, "macs": float(plan["macs"]), FINAL: False, "rkd_node": node,
                         "rkd_epoch": json.dumps(epoch_report.__dict__)})

    result = Objective.train(train_config, data, targets, report)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(result.state_dict, Path(folder) / "weights.pt")
        (Path(folder) / "result.json").write_text(json.dumps(result.to_dict()))
        tune.report(
            {"val_acc": result.val_acc, "macs": float(result.macs), FINAL: True, "rkd_node": node,
             "rkd_epoch": json.dumps(result.history[-1].__dict__)},
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


# -- the driver -------------------------------------------------------------------------------------

def _fidelity_aware_search(**kwargs):
    """OptunaSearch that tells Optuna a trial without its final report was PRUNED (or FAIL on error)."""
    from ray.tune.search.optuna import OptunaSearch

    class FidelityAwareOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result is not None and not result.get(FINAL):
                result = None  # stopped early (or crashed) after a per-epoch report: not a full-fidelity value
            super().on_trial_complete(trial_id, result=result, error=error)

        # The study is persisted trial by trial in the journal file, and a rerun resumes from it,
        # not from Tune's experiment checkpoint: there is no searcher state to pickle (the
        # define-by-run function is a closure over the driver's plans).
        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            pass

    return FidelityAwareOptunaSearch(**kwargs)


class _MlflowOnDriver:
    """The Tune callback that records every trial in MLflow from the driver, like the Optuna back-end."""

    def __init__(self, search: Search, plans: dict[int, TrialPlan]) -> None:
        from ray.tune import Callback  # not at module level: `connect` must set RAY_AUTH_MODE before Ray is imported

        self.search = search
        self.plans = plans
        self.runs: dict[str, tuple[int, str]] = {}  # Tune trial id -> (Optuna trial number, MLflow run id)
        self.last: dict[str, dict[str, Any]] = {}
        self.checkpoints: dict[str, Any] = {}
        outer = self

        class Recorder(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                outer.start(trial)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer.result(trial, result)

            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                outer.checkpoints[trial.trial_id] = checkpoint

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.complete(trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.error(trial)

        self.callback = Recorder()

    def start(self, trial) -> None:
        number = trial.config["rkd"]["number"]
        plan = self.plans[number]
        run_id = self.search.start_trial(number, f"optuna:{number}", plan)
        self.runs[trial.trial_id] = (number, run_id)

    def result(self, trial, result: dict[str, Any]) -> None:
        first = trial.trial_id not in self.last
        self.last[trial.trial_id] = result
        number, run_id = self.runs[trial.trial_id]
        if first and result.get("rkd_node"):  # where it runs, visible while it runs
            self.search.tracker.set_tags(run_id, {"rkd.node": result["rkd_node"]})
        if result.get("rkd_epoch"):
            epoch = EpochReport(**json.loads(result["rkd_epoch"]))
            self.search.tracker.log_epoch(run_id, epoch)
            self.search.update_bar(f"t{number} {self.plans[number].config.student.name} epoch {epoch.epoch}/{epoch.epochs}")

    def complete(self, trial) -> None:
        number, run_id = self.runs.pop(trial.trial_id)
        plan = self.plans[number]
        last = self.last.pop(trial.trial_id, {})
        tags = {"rkd.node": last["rkd_node"]} if last.get("rkd_node") else {}
        if not plan.feasible:
            self.search.record_trial(run_id, number, plan, "infeasible", None, tags=tags)
        elif last.get(FINAL) and trial.trial_id in self.checkpoints:
            with self.checkpoints.pop(trial.trial_id).as_directory() as folder:
                import torch

                state_dict = torch.load(Path(folder) / "weights.pt", map_location="cpu", weights_only=True)
                result = TrainResult.from_dict(json.loads((Path(folder) / "result.json").read_text()), state_dict)
            self.search.record_trial(run_id, number, plan, "complete", result, tags=tags)
        else:  # stopped by the scheduler: keep how far it got, off the front
            epochs_done = int(last.get("training_iteration", 0))
            partial = {"val_acc": float(last["val_acc"])} if "val_acc" in last else {}
            self.search.record_trial(run_id, number, plan, "pruned", None, tags=tags, partial=partial, epochs_done=epochs_done)

    def error(self, trial) -> None:
        if trial.trial_id not in self.runs:
            return
        number, run_id = self.runs.pop(trial.trial_id)
        message = str(getattr(trial, "error_file", "") or "")
        try:
            if message and Path(message).is_file():
                message = Path(message).read_text()[-5000:]
        except OSError:
            pass
        self.search.record_trial(run_id, number, self.plans[number], "failed", None, error=message or "the trial raised",
                                 tags={"rkd.failure": "error"}, epochs_done=int(self.last.pop(trial.trial_id, {}).get("training_iteration", 0)))
        self.search.progress.write(f"trial {number} failed on Ray; see the rkd.error tag of its MLflow run")

    def abandon(self, reason: str, failure: str) -> None:
        """The search stopped (Ctrl-C, or Tune itself failed): mark the running trials; a rerun runs them again."""
        for number, run_id in self.runs.values():
            self.search.record_trial(run_id, number, self.plans[number], "failed", None, error=reason,
                                     tags={"rkd.failure": failure}, status="KILLED")
        self.runs.clear()


def connect(search: Search) -> None:
    """Start a local Ray, or join the cluster at --address / RAY_ADDRESS, and check its storage.

    Called while the search validates its input: a cluster that cannot be reached, or storage that
    its nodes do not share, fails before any study, output folder or MLflow run exists.
    """
    address = search.options.address or os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # Clusters started with `ray start --head` use token authentication (Ray 2.60), but a client
        # joining an address sends its token only in token mode, which Ray reads when imported
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING
    try:
        if address:
            ray.init(address=address, logging_level=level, log_to_driver=level <= logging.INFO)
        else:
            ray.init(include_dashboard=False, logging_level=level, log_to_driver=level <= logging.INFO)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = address or "a local Ray"
        raise UsageError(f"cannot start or join Ray at {where} ({str(error).splitlines()[0][:200]}): "
                         "check --address HOST:PORT (or RAY_ADDRESS), that `ray start --head` runs there, and, for a "
                         "cluster with token authentication, that its token is here (~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    try:
        check_shared_storage(storage_path(search))
    except BaseException:
        ray.shutdown()
        raise


def _auth_token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def storage_path(search: Search) -> str:
    """Where Tune keeps trial folders and checkpoints: --storage-path, else ``OUTPUT/ray``."""
    path = search.options.storage_path or str(search.output / "ray")
    return path if path.startswith(_URI_SCHEMES) else str(Path(path).resolve())


def check_shared_storage(storage: str) -> None:
    """On a multi-node cluster, every node must see the experiment storage: check it before any trial.

    A URI (s3://, gs://, ...) is taken as shared. A plain path is checked: the driver writes a marker
    file there and a task on each alive node looks for it.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or storage.startswith(_URI_SCHEMES):
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(storage)
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".rkd-shared-{uuid.uuid4().hex}"
    marker.write_text("rkd-search storage check")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        checks = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
                  for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
        for path in created:  # leave nothing behind: validation creates nothing
            path.rmdir()
    if blind:
        raise UsageError(
            f"the Ray experiment storage {storage} is not shared: {len(blind)} of {len(nodes)} nodes cannot see it. "
            "On a multi-node cluster pass --storage-path on shared storage (an NFS path mounted on every node, or s3://...)"
        )


def _resources(search: Search) -> dict[str, float]:
    """--trial-resources, else one trial per node at a time: two trainings on the same cores are slower
    in total than one after the other (measured on 2 cores), so a trial takes the smallest node's CPUs."""
    import ray

    if search.options.trial_resources:
        return dict(search.options.trial_resources)
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return {"cpu": min((c for c in cpus if c > 0), default=1.0)}


def run_trials(search: Search) -> None:
    """Run the missing trials of the study as a Tune experiment (Ray is connected by ``connect``)."""
    import ray

    try:
        _run_tune(search)
    finally:
        ray.shutdown()  # a local Ray stops; a cluster stays up and only this driver leaves


def _run_tune(search: Search) -> None:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises at once; the running trials are marked
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output prints even at verbose=0; ours is the bar
    options = search.options
    remaining = options.trials - search.finished_trials()
    if remaining <= 0:
        return
    storage = storage_path(search)

    objective = Objective(search.space, search.context)
    plans: dict[int, TrialPlan] = {}

    def define(trial) -> dict[str, Any]:
        plan = objective.define(trial)
        plans[trial.number] = plan
        return {"rkd": {"number": trial.number, "feasible": plan.feasible, "macs": plan.ops.macs, "config": plan.config.to_dict()}}

    existing = len(search.study.trials)
    searcher = _fidelity_aware_search(
        space=define, metric=list(OBJECTIVES), mode=["max" if d == "maximize" else "min" for d in DIRECTIONS],
        sampler=search.make_sampler(existing), storage=search.study_storage(), study_name=STUDY_NAME,
    )
    if options.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=options.max_concurrent)
    scheduler = FIFOScheduler()
    if options.multi_fidelity:
        scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration", max_t=options.epochs,
                                  grace_period=max(1, options.epochs // 4), reduction_factor=3)
    recorder = _MlflowOnDriver(search, plans)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=search.data.to("cpu"), targets=search.targets.materialize()),
        _resources(search),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining, reuse_actors=False),
        run_config=tune.RunConfig(storage_path=storage, name=f"rkd-search-{uuid.uuid4().hex[:8]}", verbose=0,
                                  callbacks=[recorder.callback], log_to_file=True),
    )
    search.tracker.set_tags(search.parent_id, {"rkd.ray_storage": storage, "rkd.ray_nodes": len([n for n in ray.nodes() if n.get("Alive")])})
    search.open_trials_bar()
    try:
        tuner.fit()
    except KeyboardInterrupt:
        recorder.abandon("interrupted (Ctrl-C)", "interrupted")
        raise
    except Exception as error:
        recorder.abandon(f"the Ray search stopped: {type(error).__name__}: {error}", "error")
        raise UsageError(f"the Ray search stopped: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    if recorder.runs:  # Tune ended without completing some trials (a stopped cluster, say)
        log.warning("%d trials ended without a result; a rerun runs them again", len(recorder.runs))
        recorder.abandon("Tune ended before the trial finished", "error")
