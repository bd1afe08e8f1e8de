"""The skip/resume/claim protocol: what a study run does with each trial, given the store.

Every (study, level, seed) of a study file ends with exactly one run under its study run,
whatever happened before: a trial whose run finished (or diverged) is skipped, one left RUNNING
by a dead process (or KILLED) resumes in its own run, a failed one trains again in a new run
(the failed one deleted), a trial identical to an earlier one of the file (equal config hash)
is recorded from that one's run, one whose configuration ended in an earlier study run of the
experiment is reused from it (unless ``--force``). Processes started at once on one store share
the work: each unit is claimed under the store lock as it is handed out (:func:`claim`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dlbench.execution.unit import checkpoint_path
from dlbench.planning import Work, stack_id
from dlbench.trial import Trial, TrialResult


@dataclass(frozen=True)
class Announcer:
    """One line on ``stream`` for each trial of the ``total`` that this process does not start afresh."""

    stream: TextIO
    total: int

    def write(self, text: str) -> None:
        self.stream.write(text)

    def __call__(self, trial: Trial, action: str, previous) -> None:
        total = self.total
        if action in ("skip", "busy"):
            what = "already done" if action == "skip" else "is running in another live process"
            self.stream.write(f"[{trial.index}/{total}] {trial.title}  skipped: run {previous.run_id} {what}\n")
        elif action == "reused":
            self.stream.write(f"[{trial.index}/{total}] {trial.title}  reused: run {previous.tags.get('dlbench.same_as')} of "
                         f"an earlier study run ended the same configuration; recorded as run {previous.run_id} "
                         "(--force trains it again)\n")
        elif action == "resume":
            self.stream.write(f"[{trial.index}/{total}] {trial.title}  resuming run {previous.run_id} "
                         f"(left {previous.status} by process {previous.tags.get('dlbench.pid', '?')})\n")
        elif action == "retry":
            self.stream.write(f"[{trial.index}/{total}] {trial.title}  trains again: run {previous.run_id} "
                         f"{previous.status.lower()} (deleted in MLflow, kept among its deleted runs)\n")




@dataclass
class StudyRun:
    parent_run_id: str
    results: list[tuple[Trial, TrialResult]] = field(default_factory=list)  # skipped ones included
    reports: list[Path] = field(default_factory=list)
    skipped: int = 0  # already finished (or diverged) in the store when this process planned the study
    skipped_finished: int = 0  # of those, the finished ones
    by_others: int = 0  # ended by other processes working on the study at the same time
    total: int = 0  # trials of the invocation, the searches' included
    studies: list[str] = field(default_factory=list)  # the invocation's studies, in file order
    not_tuned: int = 0  # final trials of searches that found no finished trial to train
    shared: int = 0  # recorded from an identical trial of the file (equal config hash), trained once
    reused: int = 0  # recorded from an earlier study run of the experiment (equal config hash)
    elsewhere: list[Trial] = field(default_factory=list)  # being run by another live process

    @property
    def busy(self) -> int:
        return len(self.elsewhere)

    def count(self, status: str) -> int:
        return sum(r.status == status for _, r in self.results)


def plan_trial(previous: list):
    """What to do with a trial given its runs under the study run (newest first):
    ``("new", None)`` when it has none, ``("skip", run)`` when it finished or diverged,
    ``("busy", run)`` when a live process runs it, ``("resume", run)`` when it was left RUNNING
    by a dead process or KILLED, ``("retry", run)`` when it failed (or a record of an identical
    trial was left half-written): it trains (or is recorded) again in a new run, the failed ones
    deleted, so that it keeps one run."""
    if not previous:
        return "new", None
    for run in previous:
        if run.ended:
            return "skip", run
    newest = previous[0]
    if newest.status == "RUNNING" and newest.process_alive():
        return "busy", newest
    if newest.is_record:
        return "retry", newest
    if newest.status in ("RUNNING", "KILLED"):
        return "resume", newest
    return "retry", newest


def stored_result(run, tracker=None) -> TrialResult:
    """A finished trial's result as the store has it (its latest metric values; with
    ``tracker``, its per-epoch history too: a tuning trial's search needs its curve)."""
    status = run.tags.get("dlbench.status", "finished")
    history = tracker.epoch_history(run) if tracker is not None else []
    return TrialResult(status=status, epochs_run=int(run.tags.get("dlbench.epochs_run", "0")),
                       final={k: v for k, v in run.metrics.items() if "." not in k}, history=history,
                       seconds=float(run.tags.get("dlbench.duration_s", "0")))


def plan_works(trials, same: dict[int, Trial], tracker, run: StudyRun, stacks, force: bool, checkpoint_dir: Path,
               say: Announcer) -> tuple[list[Work], dict[int, list[Trial]]]:
    """The units of work: trials to resume from a stack's checkpoint (the same members again),
    then every other trial to run, stacked where they can; and the trials waiting for an
    identical one (``same``) to be trained, by its index. Each trial of the study run is looked
    for among the runs under it: one that finished is skipped, one another live process runs is
    left to it. A trial with no run there whose configuration finished in an earlier study run of
    the experiment is recorded from it (unless ``force``). Each unit is claimed as it is handed out."""
    own = tracker.study_trials()
    earlier = {} if force else tracker.existing_trials()
    resumed_stacks: dict[str, list[tuple[int, Trial]]] = {}
    to_plan, reused = [], []
    waiting: dict[int, list[Trial]] = {}
    done: dict[int, object] = {}  # the first of identical trials, ended: index -> its run
    for trial in trials:
        action, previous = plan_trial(own.get(trial.key, []))
        if action == "skip":
            run.skipped += 1
            run.skipped_finished += previous.status == "FINISHED"
            run.results.append((trial, stored_result(previous)))
            done[trial.index] = previous
        elif action == "busy":
            run.elsewhere.append(trial)
        if action in ("skip", "busy"):
            say(trial, action, previous)
            continue
        if trial.index in same:  # recorded from its first once that one has ended
            waiting.setdefault(same[trial.index].index, []).append(trial)
            continue
        source = None if action != "new" or trial.is_tuning else earlier_result(earlier.get(trial.config_hash, []),
                                                                                  tracker.parent_id)
        if source is not None:
            recorded = tracker.record_same(trial, source, reused=True)
            reused.append(source)
            run.reused += 1
            run.results.append((trial, stored_result(recorded)))
            done[trial.index] = recorded
            continue
        sid = previous.tags.get("dlbench.stack_id") if action == "resume" else None
        if sid and (checkpoint_dir / f"stack-{sid}.pt").is_file():
            resumed_stacks.setdefault(sid, []).append((int(previous.tags.get("dlbench.stack_member", 0)), trial))
            continue
        to_plan.append(trial)
    if reused:
        parents = Counter(r.tags.get("mlflow.parentRunId", "?") for r in reused)
        say.write(f"{len(reused)} trials reused from earlier study runs of experiment {tracker.experiment!r} "
                     f"(the same configuration and seed finished there: "
                     f"{', '.join(f'{n} of run {p}' for p, n in parents.items())}); each is recorded under this "
                     "study run with dlbench.same_as naming the run that trained it. --force trains them again.\n")
    busy = {t.index for t in run.elsewhere}
    for first, twins in list(waiting.items()):
        if first in busy:  # the process training it records them
            for twin in waiting.pop(first):
                run.elsewhere.append(twin)
        elif first in done:
            for twin in waiting.pop(first):
                action, recorded = record_from(twin, done[first], tracker, say)
                run.shared += action == "recorded"
                if action == "busy":
                    run.elsewhere.append(twin)
                else:
                    run.results.append((twin, stored_result(recorded)))
    works = [Work(tuple(t for _, t in sorted(members, key=lambda m: m[0])), sid, as_stack=True)
             for sid, members in resumed_stacks.items()]
    return works + stacks(to_plan), waiting


def earlier_result(runs: list, parent_id: str):
    """The newest run that trained this configuration and ended (finished or diverged) under
    another study run of the experiment, or None."""
    for run in runs:
        if run.ended and run.tags.get("dlbench.role") == "trial" and run.tags.get("mlflow.parentRunId") != parent_id:
            return run
    return None


def record_identical(twin: Trial, first: Trial, tracker, say: Announcer):
    """Record ``twin`` from the run of ``first``, the identical trial of the file that trained
    (just now, or in another process or invocation): see :func:`record_from`."""
    tracker.flush()  # its metrics stored before they are read back
    runs = tracker.study_trials([first.key]).get(first.key, [])
    if first.index in tracker.run_ids:
        runs.insert(0, tracker.stored(tracker.run_ids[first.index]))
    ended = [r for r in runs if r.ended] or [r for r in runs if r.status == "FAILED"]
    if not ended:  # its run is not there to read (a tracking server lost it): the next run records it
        return "busy", None
    return record_from(twin, ended[0], tracker, say)


def record_from(twin: Trial, source, tracker, say: Announcer):
    """Under the store lock: ``("recorded", run)``, the run made for ``twin`` from ``source``;
    or ``("skip" | "busy", run)`` when another process has recorded it, or is recording it."""
    with tracker.lock:
        previous = tracker.study_trials([twin.key]).get(twin.key, [])
        action, other = plan_trial(previous)
        if action in ("skip", "busy"):
            say(twin, action, other)
            return action, other
        tracker.retire(previous)  # a half-written record, or a failed one
        made = tracker.record_same(twin, source)
        if not tracker.lock.exclusive and (first := tracker.rival(twin)) is not None:
            tracker.withdraw(twin)
            return ("busy" if first.status == "RUNNING" else "skip"), first
    say.write(f"[{twin.index}/{say.total}] {twin.title}  {made.tags.get('dlbench.status', 'finished')}: the same "
                 f"configuration and seed as {made.tags.get('dlbench.same_as_name')} (trained once, run "
                 f"{made.tags.get('dlbench.same_as')}); recorded as run {made.run_id}\n")
    return "recorded", made


def claim(work: Work, tracker, force: bool, checkpoint_dir: Path, say: Announcer):
    """Take ``work`` for this process, under the store lock: re-read its members' runs under the
    study run, leave out the members another process has finished or is running since the plan,
    open a run (RUNNING, with this process's pid) for each of the others, or adopt the one a dead
    process left (a failed one is deleted: the trial trains again in a new run). Returns the unit
    to train (None: nothing left of it) and (trial, "skip" or "busy", the other process's run)
    for each member left out."""
    with tracker.lock:
        existing = tracker.study_trials([t.key for t in work.members])
        actions = {t.index: plan_trial(existing.get(t.key, [])) for t in work.members}
        # a search's trial (planned as it runs) that an earlier study run of the experiment ended
        searched = [t for t in work.members if t.tuning is not None and actions[t.index][0] == "new"]
        earlier = tracker.existing_trials({t.config_hash for t in searched}) if searched and not force else {}
        for trial in searched:
            if (source := earlier_result(earlier.get(trial.config_hash, []), tracker.parent_id)) is not None:
                actions[trial.index] = ("reused", tracker.record_same(trial, source, reused=True))
        for trial in work.members:
            action, previous = actions[trial.index]
            if action == "resume":
                tracker.adopt(trial, previous)
            elif action in ("new", "retry"):
                failed = existing.get(trial.key, [])
                tracker.retire(failed)
                tracker.open_run(trial, {"dlbench.replaces": ",".join(r.run_id for r in failed)} if failed else None)
        if not tracker.lock.exclusive:  # no lock (a tracking server): the earlier claim wins
            for trial in work.members:
                if actions[trial.index][0] in ("new", "retry") and (first := tracker.rival(trial)) is not None:
                    tracker.withdraw(trial)
                    actions[trial.index] = ("busy" if first.status == "RUNNING" else "skip", first)
    taken = [(t, *actions[t.index]) for t in work.members if actions[t.index][0] in ("skip", "busy", "reused")]
    for trial in work.members:
        say(trial, *actions[trial.index])
    mine = tuple(t for t in work.members if actions[t.index][0] in ("new", "retry", "resume"))
    if not mine:
        return None, taken
    unit = work if len(mine) == len(work.members) else Work(mine, stack_id(mine), work.alone_because)
    if not any(actions[t.index][0] == "resume" for t in mine):
        checkpoint_path(checkpoint_dir, unit).unlink(missing_ok=True)  # a stale file must not leak in
    return unit, taken


def ended_elsewhere(run: StudyRun, tracker) -> None:
    """The trials other processes were running: those they have ended since count as results
    of this study run (as the store has them); those still running stay theirs."""
    if not run.elsewhere:
        return
    found = tracker.study_trials([t.key for t in run.elsewhere])
    still = []
    for trial in run.elsewhere:
        previous = found.get(trial.key, [])
        action, done = plan_trial(previous)
        if action == "busy":
            still.append(trial)
            continue
        if action != "skip" and previous and previous[0].status == "FAILED":
            done = previous[0]  # it raised there
        if done is not None:
            run.by_others += 1
            run.results.append((trial, stored_result(done)))
    run.elsewhere = still
