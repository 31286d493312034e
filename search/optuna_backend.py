"""The embedded back-end: Optuna's ask-and-tell loop, one trial at a time in this process.

Ask-and-tell keeps every state change explicit: an over-budget student is told to the sampler
with its constraint and never trained; a failure or Ctrl-C marks the trial FAIL (rerun on resume);
the study lives in a journal file under the output folder, so rerunning the same command runs
only the trials still missing.
"""

from __future__ import annotations

import logging
import traceback

from optuna.trial import TrialState

from .driver import Search
from .errors import UsageError
from .objective import Objective

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


def run_trials(search: Search) -> None:
    objective = Objective(search.space, search.context)
    study = search.study
    search.open_trials_bar()
    failures = 0
    while search.finished_trials() < search.options.trials:
        trial = study.ask()
        plan = objective.define(trial)
        key = f"optuna:{trial.number}"
        run_id = search.start_trial(trial.number, key, plan)
        if not plan.feasible:
            study.tell(trial, Objective.infeasible_values(plan))
            search.record_trial(run_id, trial.number, plan, "infeasible", None)
            continue

        def report(epoch_report, run_id=run_id, number=trial.number, name=plan.config.student.name):
            search.tracker.log_epoch(run_id, epoch_report)
            search.update_bar(f"t{number} {name} epoch {epoch_report.epoch}/{epoch_report.epochs}")
            return False

        try:
            result = Objective.train(plan.config, search.data, search.targets, report, search.device)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            search.record_trial(run_id, trial.number, plan, "failed", None, error="interrupted (Ctrl-C)",
                                tags={"rkd.failure": "interrupted"}, status="KILLED")
            raise
        except Exception as error:  # a diverging or crashing trial must not end the search
            failures += 1
            study.tell(trial, state=TrialState.FAIL)
            message = f"{type(error).__name__}: {error}"
            search.record_trial(run_id, trial.number, plan, "failed", None, error=traceback.format_exc(), tags={"rkd.failure": "error"})
            search.progress.write(f"trial {trial.number} ({plan.config.student.name}) failed: {message}")
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise UsageError(f"{failures} trials in a row failed, the last with {message}; see the rkd.error tags in MLflow") from None
            continue
        failures = 0
        study.tell(trial, [result.val_acc, float(result.macs)])
        search.record_trial(run_id, trial.number, plan, "complete", result)
