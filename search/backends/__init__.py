"""The back-ends a search runs its trials on. Each module offers ``connect(setup)`` and
``run_trials(loop, session)``; the driver picks one by name (``driver.BACKENDS``) and no module
imports both.

- ``embedded``: Optuna's ask-and-tell in the search's process, trials in worker processes (``workers``).
- ``ray``: Ray Tune trials searched by Optuna, on a local Ray or a cluster.
"""
