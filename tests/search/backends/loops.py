"""Each back-end's trial loop in-process, with a stub ``train``: no subprocess, no real training.

The study is a real Optuna journal, MLflow a real SQLite store, the space the built-in default;
only the training is replaced by a function that reports epochs and returns a result derived from
the student's width. The embedded loop trains in this process (``TrialLoop.workers`` None); the
Ray loop runs its real searcher (OptunaSearch), scheduler and callback, driven in the order Tune
drives them, without starting Ray.
"""

from __future__ import annotations

from pathlib import Path

from rkd_search.search import TrialState, compute_front
from rkd_search.search.lifecycle import Lifecycle
from rkd_search.search.names import STUDY_PARENT_RUN
from rkd_search.search.trial_loop import TrialLoop
from rkd_search.search.objective import DIRECTIONS, Limits, LoopOptions, Objective
from rkd_search.search.recorder import FrontSettings, Recorder
from rkd_search.search.report import Progress
from rkd_search.search.study import open_study
from rkd_search.spaces import TrialContext, load_space
from rkd_search.trainer import EpochReport, TrainResult, TrainState

CONTEXT = TrialContext(budget_macs=20e6, in_channels=3, num_classes=4, resolution=16, epochs=9, batch_size=32)


class StubTrain:
    """Reports every epoch and returns a result whose accuracy grows with width and epochs.

    ``fail``: trial widths (student.width) that raise; ``interrupt_on``: call index that raises
    KeyboardInterrupt (once). Records each call as (student name, start epoch, until).
    """

    def __init__(self, fail=(), interrupt_on=None, fail_all=False, interrupt_on_resume=False):
        self.calls = []
        self.fail, self.interrupt_on, self.fail_all = set(fail), interrupt_on, fail_all
        self.interrupt_on_resume = interrupt_on_resume

    def __call__(self, config, data, targets, report=None, device=None, resume=None, until=None):
        start = resume.epoch if resume is not None else 0
        until = until or config.epochs
        self.calls.append((config.student.name, start, until))
        if self.interrupt_on is not None and len(self.calls) - 1 == self.interrupt_on:
            self.interrupt_on = None
            raise KeyboardInterrupt
        if self.interrupt_on_resume and resume is not None:
            self.interrupt_on_resume = False
            raise KeyboardInterrupt
        if self.fail_all or config.student.width in self.fail:
            raise FloatingPointError("the loss became nan in epoch 1; lower the learning rate")
        history = list(resume.history) if resume else []
        for epoch in range(start + 1, until + 1):
            penalty = 0.1 * (config.lr < 0.06) + 0.2 * (config.loss.graph_weight > 10)  # some trials worse than others
            accuracy = min(0.99, 0.4 + 0.2 * config.student.width + 0.04 * epoch - penalty)
            history.append(EpochReport(epoch, config.epochs, accuracy, 1.0 / epoch, {"ce": 1.0 / epoch}, 0.1, 0.01))
            if report is not None:
                report(history[-1])
        paused = until < config.epochs
        state = TrainState(until, {}, {}, list(history), 0.1) if paused else None
        return TrainResult(config.student.with_data(3, 4), history[-1].val_acc, None if paused else history[-1].val_acc - 0.01,
                           None, None, 1_000_000, 2_000_000, 10_000, 0.1, until, config.epochs, False, (3, 16, 16), history,
                           {}, state, paused=paused)


def make_loop(tracker, output: Path, train, trials=4, rungs=(9,), limits=None, space="default", synthetic=None,
              latency=None, scorer=None, prescreen=None, sampler="random") -> TrialLoop:
    """A loop over a study in ``output`` (resumed when one is there), trained in this process by ``train``."""
    space = load_space(space)
    output.mkdir(parents=True, exist_ok=True)
    enqueued = space.enqueued_params(CONTEXT)
    study = open_study(output, DIRECTIONS, sampler, 0, trials, len(enqueued))
    if STUDY_PARENT_RUN not in study.user_attrs:
        for params in enqueued:
            study.enqueue_trial(params)
        parent_id = tracker.start_search(f"loop-{output.name}", {"budget": "20M"}, {}, {})
        study.set_user_attr(STUDY_PARENT_RUN, parent_id)
    parent_id = study.user_attrs[STUDY_PARENT_RUN]
    recorder = Recorder(tracker, parent_id, Progress(False), FrontSettings(output, 20e6, "test", 0.25, 400))
    recorder.reload()
    recorder.student_epochs = sum(r.epochs for r in recorder.records)
    objective = Objective(space, CONTEXT, limits or Limits(20e6), latency=latency, scorer=scorer)
    lifecycle = Lifecycle(study, objective, recorder, list(rungs), prescreen=prescreen)
    options = LoopOptions(trials=trials, epochs=9, rungs=list(rungs), eta=3, checkpoints=output / "checkpoints")
    return TrialLoop(lifecycle, objective, synthetic, None, options, train)


def children(tracker, loop):
    return tracker.trial_records(loop.recorder.parent_id)


def check_front_tags(tracker, loop):
    records = children(tracker, loop)
    front = {r.run_id for r in compute_front(records)}
    assert front, "no trial on the front"
    assert {r.run_id for r in records if r.pareto} == front
    assert all(r.state is TrialState.COMPLETE and r.full_fidelity for r in records if r.pareto)


