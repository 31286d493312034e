"""The distributed back-end: the same objective as a Ray Tune trainable, searched by OptunaSearch.

- The define-by-run function is ``Objective.define`` (the same space function and the same
  constraints as the Optuna back-end); it runs on the driver, which keeps each trial's plan.
- The trainable calls the loop's ``train`` function. The dataset tensors and the teacher targets
  reach the workers once, through the object store (``tune.with_parameters``).
- Every MLflow write happens on the driver, through the loop's recorder in a Tune callback:
  workers need no access to the tracking store, and the runs, names, metrics, tags and artifacts
  are those of the Optuna back-end.
- Multi-fidelity: a trial reports ``val_acc`` after every epoch, and ``ParetoRungScheduler``
  decides at each rung, with the promotion rule of ``fidelity`` (the Optuna back-end's), whether
  it continues: the stopping variant of asynchronous successive halving. A stopped trial reaches
  Optuna as PRUNED and MLflow as ``pruned``, off the Pareto front.
- Resume: the study lives in the journal file under ``--output``, as with the Optuna back-end; a
  trial a stopped driver left RUNNING is failed and enqueued again with the same parameters, and
  a rerun starts a new Tune experiment that asks the same study only for the missing trials.
- A local Ray listens on 127.0.0.1 only; a cluster keeps its own network settings.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rkd_search.spaces import TrialPlan
from rkd_search.trainer import EpochReport, TrainConfig, TrainResult

from .errors import SearchError, UsageError
from .fidelity import RUNGS_ATTR, RungEntry, promotable
from .objective import DIRECTIONS, OBJECTIVES, TrialLoop, train_student
from .records import TrialState
from .study import STUDY_NAME

log = logging.getLogger(__name__)

FINAL = "rkd_final"
_URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://", "az://", "file://")


# -- the trainable: runs in a Ray worker ------------------------------------------------------------

def train_trial(config: dict[str, Any], data=None, targets=None, train: Callable = train_student) -> None:
    """One trial in a Ray worker: report per-epoch validation accuracy, then the final result and weights."""
    import ray
    import torch
    from ray import tune

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    plan = config["rkd"]
    if not plan["feasible"]:  # over a limit: never trained, the sampler still learns its MACs
        tune.report({"val_acc": 0.0, "macs": float(plan["macs"]), FINAL: True, "rkd_node": node})
        return
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    train_config = TrainConfig.from_dict(plan["config"])

    def report(epoch_report: EpochReport) -> None:
        if epoch_report.epoch < epoch_report.epochs:  # the last epoch goes out with the final result
            tune.report({"val_acc": epoch_report.val_acc, "macs": float(plan["macs"]), FINAL: False, "rkd_node": node,
                         "rkd_epoch": json.dumps(epoch_report.__dict__)})

    result = train(train_config, data, targets, report)
    with tempfile.TemporaryDirectory() as folder:
        torch.save(result.state_dict, Path(folder) / "weights.pt")
        (Path(folder) / "result.json").write_text(json.dumps(result.to_dict()))
        tune.report(
            {"val_acc": result.val_acc, "macs": float(result.macs), FINAL: True, "rkd_node": node,
             "rkd_epoch": json.dumps(result.history[-1].__dict__)},
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


# -- the driver's pieces: searcher, scheduler, MLflow callback ----------------------------------------

def fidelity_aware_search(deadline: float | None = None, **kwargs):
    """OptunaSearch that tells Optuna a trial without its final report was PRUNED (or FAIL on error),
    and starts no trial after ``deadline`` (``time.monotonic()``)."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class FidelityAwareOptunaSearch(OptunaSearch):
        def suggest(self, trial_id: str):
            if deadline is not None and time.monotonic() > deadline:
                return Searcher.FINISHED
            return super().suggest(trial_id)

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


def pareto_rung_scheduler(rungs: list[int], eta: int, budget_macs: float, entries: dict[int, list[RungEntry]], floor: float = 0.0):
    """A Tune scheduler that stops a trial at a rung unless the promotion rule keeps it (see ``fidelity``)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoRungScheduler(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.entries = {r: list(entries.get(r, [])) for r in rungs[:-1]}

        def decide(self, number: int, epochs: int, val_acc: float, macs: float) -> bool:
            """Record the trial at rung ``epochs``; True when it may continue."""
            table = self.entries[epochs]
            table[:] = [e for e in table if e.number != number] + [RungEntry(number, val_acc, macs)]
            return number in promotable(table, eta, budget_macs, floor=floor)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            epochs = int(result.get("training_iteration", 0))
            if epochs in self.entries and not result.get(FINAL):
                if not self.decide(trial.config["rkd"]["number"], epochs, float(result["val_acc"]), float(result["macs"])):
                    return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return ParetoRungScheduler()


class MlflowOnDriver:
    """The Tune callback that records every trial through the loop's recorder, on the driver."""

    def __init__(self, loop: TrialLoop, plans: dict[int, tuple[TrialPlan, int]]) -> None:
        from ray.tune import Callback  # not at module level: `connect` must set Ray's environment first

        self.loop = loop
        self.recorder = loop.recorder
        self.plans = plans  # Optuna trial number -> (plan, Optuna trial id)
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
        plan, _ = self.plans[number]
        run_id = self.recorder.start(number, f"optuna:{number}", plan)
        self.runs[trial.trial_id] = (number, run_id)

    def result(self, trial, result: dict[str, Any]) -> None:
        first = trial.trial_id not in self.last
        self.last[trial.trial_id] = result
        number, run_id = self.runs[trial.trial_id]
        if first and result.get("rkd_node"):  # where it runs, visible while it runs
            self.recorder.tracker.set_tags(run_id, {"rkd.node": result["rkd_node"]})
        if result.get("rkd_epoch"):
            plan, trial_id = self.plans[number]
            epoch = EpochReport(**json.loads(result["rkd_epoch"]))
            self.recorder.epoch(run_id, number, plan, epoch)
            if epoch.epoch in self.loop.options.rungs:  # the rung tables of a rerun are rebuilt from these
                storage = self.loop.study._storage
                rungs = dict(storage.get_trial(trial_id).user_attrs.get(RUNGS_ATTR, {}))
                rungs[str(epoch.epoch)] = epoch.val_acc
                storage.set_trial_user_attr(trial_id, RUNGS_ATTR, rungs)

    def complete(self, trial) -> None:
        number, run_id = self.runs.pop(trial.trial_id)
        plan, _ = self.plans[number]
        last = self.last.pop(trial.trial_id, {})
        tags = {"rkd.node": last["rkd_node"]} if last.get("rkd_node") else {}
        if not plan.feasible:
            self.recorder.finish(run_id, number, plan, TrialState.INFEASIBLE, tags=tags)
        elif last.get(FINAL) and trial.trial_id in self.checkpoints:
            with self.checkpoints.pop(trial.trial_id).as_directory() as folder:
                import torch

                state_dict = torch.load(Path(folder) / "weights.pt", map_location="cpu", weights_only=True)
                result = TrainResult.from_dict(json.loads((Path(folder) / "result.json").read_text()), state_dict)
            self.recorder.finish(run_id, number, plan, TrialState.COMPLETE, result, tags=tags)
        else:  # stopped by the scheduler: keep how far it got, off the front
            epochs_done = int(last.get("training_iteration", 0))
            partial = {"val_acc": float(last["val_acc"])} if "val_acc" in last else {}
            self.recorder.finish(run_id, number, plan, TrialState.PRUNED, tags={**tags, "rkd.pruned": "not promoted"},
                                 partial=partial, epochs_done=epochs_done)

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
        self.recorder.finish(run_id, number, self.plans[number][0], TrialState.FAILED, error=message or "the trial raised",
                             tags={"rkd.failure": "error"}, epochs_done=int(self.last.pop(trial.trial_id, {}).get("training_iteration", 0)))
        self.recorder.progress.write(f"trial {number} failed on Ray; see the rkd.error tag of its MLflow run")

    def abandon(self, reason: str, failure: str) -> None:
        """The search stopped (Ctrl-C, or Tune itself failed): mark the running trials; a rerun runs them again."""
        for number, run_id in self.runs.values():
            self.recorder.finish(run_id, number, self.plans[number][0], TrialState.FAILED, error=reason,
                                 tags={"rkd.failure": failure}, status="KILLED")
        self.runs.clear()


# -- connecting: a local Ray on loopback, or a cluster ------------------------------------------------

@dataclass
class RaySession:
    """A connected Ray and the options the Ray loop reads."""

    storage: str
    trial_resources: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    address: str | None = None

    def close(self) -> None:
        import ray

        ray.shutdown()  # a local Ray stops; a cluster stays up and only this driver leaves


def connect(options, output: Path) -> RaySession:
    """Start a local Ray (listening on 127.0.0.1 only), or join the cluster at --address / RAY_ADDRESS,
    and check that its nodes share the experiment storage. Called when the search starts, before
    anything is created: an unreachable cluster or unshared storage fails with one line."""
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # Clusters started with `ray start --head` use token authentication (Ray 2.60), but a client
        # joining an address sends its token only in token mode, which Ray reads when imported
        os.environ["RAY_AUTH_MODE"] = "token"
    if not address:
        # Ray keeps a local instance on loopback when it is not meant to form a cluster (what it does
        # on macOS and Windows); Linux defaults to the machine's address and all interfaces
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
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
    storage = storage_path(options.storage_path, output)
    try:
        check_shared_storage(storage)
    except BaseException:
        ray.shutdown()
        raise
    return RaySession(storage, dict(options.trial_resources), options.max_concurrent, address)


def _auth_token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def storage_path(storage: str | None, output: Path) -> str:
    """Where Tune keeps trial folders and checkpoints: --storage-path, else ``OUTPUT/ray``."""
    path = storage or str(output / "ray")
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


def _resources(session: RaySession) -> dict[str, float]:
    """--trial-resources, else one trial per node at a time: two trainings on the same cores are slower
    in total than one after the other (measured on 2 cores), so a trial takes the smallest node's CPUs."""
    import ray

    if session.trial_resources:
        return dict(session.trial_resources)
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return {"cpu": min((c for c in cpus if c > 0), default=1.0)}


# -- the loop -----------------------------------------------------------------------------------------

def requeue_orphans(loop: TrialLoop) -> int:
    """Trials a stopped driver left RUNNING: failed, and enqueued again with the same parameters (OptunaSearch
    cannot take a running trial over). Their MLflow runs are marked stale by the driver."""
    from optuna.trial import TrialState as OptunaState

    orphans = loop.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
    for trial in orphans:
        loop.study.tell(trial.number, state=OptunaState.FAIL)
        loop.study.enqueue_trial(trial.params, user_attrs={"rkd.retry_of": trial.number})
    return len(orphans)


def rung_entries(loop: TrialLoop) -> dict[int, list[RungEntry]]:
    """Every trial's recorded rung results, from the study (a rerun's scheduler starts from them)."""
    entries: dict[int, list[RungEntry]] = {r: [] for r in loop.options.rungs}
    for trial in loop.study.get_trials(deepcopy=False):
        macs = trial.user_attrs.get("rkd.macs")
        for epochs, val_acc in trial.user_attrs.get(RUNGS_ATTR, {}).items():
            if int(epochs) in entries and macs is not None:
                entries[int(epochs)].append(RungEntry(trial.number, val_acc, macs))
    return entries


@dataclass
class TunePieces:
    """What a Tune experiment of the loop is made of; ``run_trials`` hands them to a Tuner, the
    back-end's own tests drive them in-process."""

    searcher: Any
    scheduler: Any
    recorder: MlflowOnDriver
    parameters: dict[str, Any]
    """``train_trial``'s shared arguments (data, targets, train), for ``tune.with_parameters``."""
    remaining: int


def finished_trials(loop: TrialLoop) -> int:
    from optuna.trial import TrialState as OptunaState

    return len(loop.study.get_trials(deepcopy=False, states=(OptunaState.COMPLETE, OptunaState.PRUNED)))


def tune_pieces(loop: TrialLoop, max_concurrent: int | None = None) -> TunePieces:
    """The searcher (OptunaSearch over the loop's study), the scheduler (the promotion rule with
    multi-fidelity), the MLflow callback and the trainable of the loop's missing trials."""
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    requeue_orphans(loop)
    plans: dict[int, tuple[TrialPlan, int]] = {}

    def define(trial) -> dict[str, Any]:
        plan = loop.objective.define(trial)
        plans[trial.number] = (plan, trial._trial_id)
        return {"rkd": {"number": trial.number, "feasible": plan.feasible, "macs": plan.ops.macs, "config": plan.config.to_dict()}}

    searcher = fidelity_aware_search(
        deadline=loop.options.deadline, space=define, metric=list(OBJECTIVES),
        mode=["max" if d == "maximize" else "min" for d in DIRECTIONS],
        sampler=loop.study.sampler, storage=loop.study._storage, study_name=STUDY_NAME,
    )
    if max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    scheduler = FIFOScheduler()
    if loop.options.multi_fidelity:
        scheduler = pareto_rung_scheduler(loop.options.rungs, loop.options.eta, loop.objective.limits.budget_macs,
                                          rung_entries(loop), loop.recorder.front.learned_threshold)
    parameters = {"data": loop.data.to("cpu"), "targets": loop.targets.materialize() if loop.targets else None, "train": loop.train}
    return TunePieces(searcher, scheduler, MlflowOnDriver(loop, plans), parameters, loop.options.trials - finished_trials(loop))


def run_trials(loop: TrialLoop, session: RaySession) -> bool:
    """Run the missing trials of the study as a Tune experiment; False when stopped by the deadline."""
    import ray
    from ray import tune

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises at once; the running trials are marked
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output prints even at verbose=0; ours is the bar
    pieces = tune_pieces(loop, session.max_concurrent)
    if pieces.remaining <= 0:
        return True
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, **pieces.parameters), _resources(session)),
        tune_config=tune.TuneConfig(search_alg=pieces.searcher, scheduler=pieces.scheduler, num_samples=pieces.remaining,
                                    reuse_actors=False),
        run_config=tune.RunConfig(storage_path=session.storage, name=f"rkd-search-{uuid.uuid4().hex[:8]}", verbose=0,
                                  callbacks=[pieces.recorder.callback], log_to_file=True),
    )
    loop.recorder.tracker.set_tags(loop.recorder.parent_id, {"rkd.ray_storage": session.storage,
                                                             "rkd.ray_nodes": len([n for n in ray.nodes() if n.get("Alive")])})
    recorder = pieces.recorder
    try:
        tuner.fit()
    except KeyboardInterrupt:
        recorder.abandon("interrupted (Ctrl-C)", "interrupted")
        raise
    except Exception as error:
        recorder.abandon(f"the Ray search stopped: {type(error).__name__}: {error}", "error")
        raise SearchError(f"the Ray search stopped: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    if recorder.runs:  # Tune ended without completing some trials (a stopped cluster, say)
        log.warning("%d trials ended without a result; a rerun runs them again", len(recorder.runs))
        recorder.abandon("Tune ended before the trial finished", "error")
    return finished_trials(loop) >= loop.options.trials
