"""Stage `tune`: optuna search of the DINO temperatures on the user's own data.

    python -m pipelines.tune [--params params.yaml]        (or: dvc repro tune)

Settings: the ``tune:`` section of params.yaml; search space: a data file (``tune.space``,
default ablations/tune_space.yaml), validated before any trial. Every trial pre-trains the
resolved profile (``tune.epochs`` epochs) with the sampled values and reports, after every
epoch, the weighted k-NN top-1 (k = ``tune.knn_k``, %) of the teacher backbone on the
``tune.split`` queries (the val split, or a held-out part of the train split) to the pruner
(median by default); the objective is the last epoch's value (maximised).

Study: ``study_name`` in ``storage`` (a journal file by default, or an RDB URL), created with
``load_if_exists``, so re-running continues the same study up to ``n_trials`` trials in total
(COMPLETE + PRUNED + FAIL). Samplers are not stored by optuna: every load passes a TPESampler
seeded with (seed, trial number), so a resumed study samples what one uninterrupted run would.

Workers: ``n_workers`` submitit jobs (pipelines.launch.run_cells: local processes, a SLURM job
array, or in-process with executor debug) share the storage. A worker creates a trial only
under a lock file (``<runs>/<study>/ask.lock``, O_EXCL: NFS-safe), after counting the trials,
so that the study ends with exactly ``n_trials`` trials whatever the number of workers. A worker
notes its running trial in ``<runs>/<study>/workers/worker_<i>.json``: when it is requeued
(SLURM timeout or pre-emption) or the stage is re-run, it resumes that trial from the trial's
checkpoint. Running trials no worker claims (journal storage has no heartbeats) are failed
as ``stale`` when the stage starts and are not counted, so re-running replaces them. The stage
must therefore be the only driver of its study while it runs.

Trials never crash the study: a diverged or collapsed trial is COMPLETE with the value 0.0 and
its collapse metrics (user attrs; status ``diverged`` / ``collapsed``); a trial that raises is
FAIL with status ``error`` and the message; a pruned one is PRUNED (status ``pruned``).
Run directory of trial n: ``<runs>/<study_name>/trial_<n>``.

Outputs (``tune.out``, atomic writes): best_params.yaml (a diff for params.yaml, best
non-collapsed COMPLETE trial), trials.csv, optimization_history.png, contour_temperatures.png
(teacher x student temperature), param_importances.png (a placeholder image with a logged note
when there are too few complete trials).

Progress: while the workers run, the stage logs "trials done d/n_trials (complete, pruned, failed,
running), elapsed, ETA" when a trial finishes and at least once a minute (progress.py).
Threads: each worker runs torch with OMP_NUM_THREADS threads where it is set, else its share of
the machine's cores (local) or the job's cpus_per_task (SLURM); trials.csv records torch_threads.

Modules: settings, param (one searched parameter), space, plan, study, objective, worker, outputs,
progress, stage.
"""
from __future__ import annotations

from .settings import LOW_VALUE, PLOTS, TuneSettings, tune_settings
from .space import Space, load_space
from .plan import Plan, make_plan
from .study import check_fingerprint, open_study
from .objective import objective_loaders
from .worker import run_worker
from .stage import TuneResult, main, run_tune

__all__ = ["LOW_VALUE", "PLOTS", "Plan", "Space", "TuneResult", "TuneSettings", "check_fingerprint",
           "load_space", "main", "make_plan", "objective_loaders", "open_study", "run_tune", "run_worker",
           "tune_settings"]
