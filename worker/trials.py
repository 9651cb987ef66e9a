"""A search's trial on the worker: after every epoch the job reports its objective to the search's Optuna study (in
the platform's database, core/db/studies.py) and asks the search's pruner whether to go on; a pruned trial stops
at that epoch boundary, keeps its metrics and ends `pruned` (worker/execute.py)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import domain, repos
from core.db.session import session_scope
from core.db.studies import study_storage
from core.jobs.search_space import make_pruner

log = logging.getLogger("fitcycle.worker")


@dataclass
class TrialReporter:
    """Reports one trial's epochs to its study; `pruned` once the pruner said stop."""

    search: domain.Search
    trial_number: int
    url: str
    job_id: str
    sessions: sessionmaker[Session]
    step: int = 0  # the epochs this job has recorded: the step of the epoch just reported
    pruned: bool = False
    last_value: float | None = None

    def report(self, row: dict[str, Any]) -> bool:
        """Report an epoch's row (already recorded); True when the pruner says this trial should stop now. The step
        is the count of the job's recorded epochs, so an epoch redone after a resume is the same step again. A study
        that cannot be reached (a database blip) prunes nothing: the trial trains on."""
        value = row.get(self.search.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False  # nothing to judge this epoch by (a stage that reports no such metric)
        self.last_value = float(value)
        try:
            with session_scope(self.sessions) as s:
                self.step = repos.epochs_of_jobs(s, [self.job_id]).get(self.job_id, self.step + 1)
            self.pruned = self._ask(self.last_value)
        except Exception:
            log.warning(
                "trial %d of search %s: could not reach its study; training on", self.trial_number, self.search.id
            )
            return False
        return self.pruned

    def _ask(self, value: float) -> bool:
        import optuna

        storage = study_storage(self.url)
        study = optuna.load_study(
            study_name=self.search.study_name,
            storage=storage,
            pruner=make_pruner(self.search.pruner),  # type: ignore[arg-type]
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.search.study_name), self.trial_number
        )
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
            return False  # the search already settled it (cancelled, or the API told its end)
        trial = optuna.trial.Trial(study, trial_id)
        trial.report(value, self.step)
        pruned = trial.should_prune()
        if pruned:
            log.info(
                "trial %d of search %s pruned after epoch %d (%s %.4f)",
                self.trial_number,
                self.search.id,
                self.step,
                self.search.metric,
                value,
            )
        return pruned


def reporter_for(sessions: sessionmaker[Session], job: domain.Job, url: str) -> TrialReporter | None:
    """The job's trial reporter, or None when the job is no search's trial (or its search is gone)."""
    if job.search_id is None or job.trial_number is None:
        return None
    with session_scope(sessions) as s:
        search = repos.get_search(s, job.search_id)
        done = repos.epochs_of_jobs(s, [job.id]).get(job.id, 0)
    if search is None:
        return None
    return TrialReporter(search, job.trial_number, url, job.id, sessions, step=done)
