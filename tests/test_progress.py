"""What a running study shows: its ETA (``eta``, the planner's ``unit_cost``), the progress it
publishes (``study_progress``) and the terminal's view of it (``progress``): a live view drawn
with rich in a terminal, plain lines in a pipe, a clean stop on Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from conftest import TINY_BASELINE, cli_env, ctrl_c_enabled, sqlite_uri, write_plugin, write_study
from dlbench.eta import UnitLeft, UnitTimes, duration, eta_seconds, occupancy, unit_kind
from dlbench.planning import Work, unit_cost
from dlbench.progress import PLAIN_EVERY_S, StudyView
from dlbench.study_progress import PROGRESS_MARK, ProgressPublisher, progress_line, strip_progress

# --- the ETA -----------------------------------------------------------------------------------


def test_eta_is_unknown_until_a_unit_of_each_kind_left_has_finished():
    assert eta_seconds(UnitTimes(), [UnitLeft("trial", 1.0)], workers=2) is None
    times = UnitTimes()
    times.record("trial", 10.0)
    assert eta_seconds(times, [UnitLeft("trial", 1.0), UnitLeft("stack of 4", 1.0)], workers=1) is None
    assert eta_seconds(UnitTimes(), [], workers=1, unplanned=3) is None  # a search's rounds, nothing timed


def test_eta_is_each_unit_left_at_its_kinds_speed_over_the_workers():
    times = UnitTimes()
    times.record("trial", 10.0, cost=2.0)  # 5 s per unit of cost
    times.record("trial", 20.0, cost=2.0)  # now 7.5
    times.record("stack of 4", 30.0, cost=3.0, trials=4)  # 10
    assert times.speeds() == {"trial": 7.5, "stack of 4": 10.0}
    left = [UnitLeft("trial", 4.0), UnitLeft("trial", 1.0), UnitLeft("stack of 4", 3.0)]
    assert eta_seconds(times, left, workers=2) == (7.5 * 5 + 10 * 3) / 2
    assert eta_seconds(times, [], workers=4) == 0  # nothing left
    assert eta_seconds(times, [UnitLeft("trial", 2.0)], workers=0) == 15  # at least one worker
    # a running unit has run part of its time already; one that overran its estimate counts as 0
    assert eta_seconds(times, [UnitLeft("trial", 2.0, running_s=5.0), UnitLeft("trial", 1.0, running_s=60.0)],
                       workers=1) == 10
    # trials not planned yet (a search's next rounds) at the mean time of a trial: 60 s / 6 trials
    assert eta_seconds(times, [], workers=2, unplanned=4) == 4 * 10 / 2
    # fewer units left than workers: they run at once, not shared out
    assert eta_seconds(times, [UnitLeft("trial", 2.0)], workers=4) == 15
    # a third of the workers' time went between units: what is left takes half again as long
    assert eta_seconds(times, [UnitLeft("trial", 2.0)], workers=1, occupancy=2 / 3) == pytest.approx(22.5)


def test_occupancy_is_the_share_of_the_workers_time_inside_units():
    assert occupancy(busy_s=30, elapsed_s=20, workers=2) == 0.75
    assert occupancy(busy_s=50, elapsed_s=20, workers=2) == 1.0  # never above 1
    assert occupancy(busy_s=1, elapsed_s=20, workers=2) == 0.25  # nor below a quarter
    assert occupancy(busy_s=0, elapsed_s=0, workers=2) == 1.0  # nothing measured yet


def test_unit_kinds_and_durations_read_as_people_say_them():
    assert (unit_kind(1), unit_kind(8)) == ("trial", "stack of 8")
    assert [duration(s) for s in (None, 4.6, 192, 7500)] == ["unknown", "5s", "3m12s", "2h05m"]


def _trial(index, group="g", epochs=20, batch_size=128, study="s", initializer="default", depth=2):
    config = {"epochs": epochs, "batch_size": batch_size, "initializer": initializer, "architecture": {"depth": depth}}
    return SimpleNamespace(index=index, group_hash=group, config=config, study=study, title=f"{study}/t{index}")


def test_the_cost_model_scales_the_training_steps_by_the_models_parameters():
    sizes = {"small": 1_000, "large": 4_000}
    small, large = Work((_trial(0, "small"),), "a"), Work((_trial(1, "large"),), "b")
    assert unit_cost(large, sizes) == 4 * unit_cost(small, sizes)
    longer = Work((_trial(2, "small", epochs=40),), "c")
    assert unit_cost(longer, sizes) == 2 * unit_cost(small, sizes)
    pretrained = Work((_trial(3, "small", initializer={"name": "greedy_autoencoder", "epochs": 5}),), "d")
    assert unit_cost(pretrained, sizes) == unit_cost(small, sizes) * (20 + 5 * 2) / 20  # one pass per layer
    # a config the preflight did not build (a tuning trial's) counts as the median of those it did
    sizes3 = sizes | {"mid": 2_000}
    assert unit_cost(Work((_trial(4, "tuned"),), "e"), sizes3) == unit_cost(Work((_trial(5, "mid"),), "f"), sizes3)


# --- the progress a study publishes --------------------------------------------------------------

def _work(*indices):
    return SimpleNamespace(members=tuple(SimpleNamespace(index=i) for i in indices))


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_publisher_times_units_by_kind_and_publishes_at_each_end_and_every_few_seconds():
    published, clock = [], _Clock()
    live = ProgressPublisher({"a": 5}, workers=1, publish=lambda p, line: published.append((p, line)),
                             every_s=5.0, clock=clock)
    alone, stack, later = _work(0), _work(1, 2), _work(3, 4)
    live.planned([alone, stack, later])
    assert published[-1][0]["eta_s"] is None and published[-1][0]["done"] == 0  # nothing measured yet
    live.dlbench_trial_start(alone.members[0], None, None)
    clock.now += 4
    live.dlbench_epoch_end(alone.members[0], 0, {})
    assert len(published) == 1  # 4 s after the last: not yet
    clock.now += 2
    live.dlbench_epoch_end(alone.members[0], 1, {})
    assert len(published) == 2 and published[-1][0]["running"] == 1
    live.ended(alone.members[0], SimpleNamespace(status="finished"))
    assert published[-1][0]["eta_s"] is None  # the stacks have no measured kind yet
    for trial in stack.members:
        live.dlbench_trial_start(trial, None, None)
    clock.now += 20
    live.ended(stack.members[0], SimpleNamespace(status="diverged"))
    live.ended(stack.members[1], SimpleNamespace(status="finished"))
    progress, line = published[-1]
    assert progress["eta_s"] == 20.0  # one stack of 2 left, a stack of 2 took 20 s
    assert (progress["done"], progress["finished"], progress["diverged"], progress["running"]) == (3, 2, 1, 0)
    assert progress["elapsed_s"] == 26.0 and progress["studies"] == {"a": 5}
    assert line.startswith(PROGRESS_MARK) and "3/5 trials done" in line and "ETA 20s" in line


def test_the_publisher_weighs_units_by_their_cost_and_counts_what_a_running_one_has_done():
    published, clock = [], _Clock()
    costs = {(0,): 1.0, (1,): 3.0, (2,): 2.0}
    live = ProgressPublisher({"a": 3}, workers=1, publish=lambda p, line: published.append(p), clock=clock,
                             cost=lambda work: costs[tuple(t.index for t in work.members)])
    works = [_work(0), _work(1), _work(2)]
    live.planned(works)
    live.dlbench_trial_start(works[0].members[0], None, None)
    clock.now += 4
    live.ended(works[0].members[0], SimpleNamespace(status="finished"))
    assert published[-1]["eta_s"] == 4 * 3 + 4 * 2  # 4 s per unit of cost: not 4 s a trial
    live.dlbench_trial_start(works[1].members[0], None, None)
    clock.now += 5
    live.publish_now()
    assert published[-1]["eta_s"] == (12 - 5) + 8  # the running one has 7 s left


def test_the_time_between_units_stretches_the_eta():
    published, clock = [], _Clock()
    live = ProgressPublisher({"a": 2}, workers=1, publish=lambda p, line: published.append(p), clock=clock)
    first, second = _work(0), _work(1)
    live.planned([first, second])
    live.dlbench_trial_start(first.members[0], None, None)
    clock.now += 4
    live.ended(first.members[0], SimpleNamespace(status="finished"))
    assert published[-1]["eta_s"] == 4.0
    clock.now += 2  # handed out and recorded: 2 s of the worker's 6 outside a unit
    live.dlbench_trial_start(second.members[0], None, None)
    live.publish_now()
    assert published[-1]["eta_s"] == 6.0  # 4 s of training at 2/3 of the worker's time


def test_a_unit_another_process_trains_is_no_longer_left():
    published = []
    live = ProgressPublisher({"a": 3}, workers=1, publish=lambda p, line: published.append(p), clock=_Clock())
    first, second = _work(0), _work(1)
    twin = SimpleNamespace(index=2)  # recorded from the first once it ends
    live.planned([first, second], twins=[twin])
    live.dlbench_trial_start(first.members[0], None, None)
    live.clock.now += 8
    live.ended(first.members[0], SimpleNamespace(status="finished"))
    assert published[-1]["eta_s"] == 8.0  # the twin costs nothing
    live.ended(twin, SimpleNamespace(status="finished"))
    live.taken(second, None)  # another process has it
    live.elsewhere(second.members[0])
    live.publish_now()
    assert published[-1]["eta_s"] == 0 and published[-1]["done"] == 2  # nothing left to this process


def test_trials_that_will_never_run_leave_the_total():
    published = []
    live = ProgressPublisher({"a": 4}, workers=1, publish=lambda p, line: published.append(p), clock=_Clock())
    live.planned([_work(0), _work(1)])  # and 2 final trials of a search, not planned yet
    for index in (0, 1):
        live.dlbench_trial_start(SimpleNamespace(index=index), None, None)
        live.clock.now += 3
        live.ended(SimpleNamespace(index=index), SimpleNamespace(status="diverged"))
    assert published[-1]["eta_s"] == 6.0  # the finals, at 3 s a trial
    live.never(2)  # no tuning trial finished: the search has no final trials
    live.publish_now()
    assert (published[-1]["done"], published[-1]["total"], published[-1]["eta_s"]) == (2, 2, 0)


def test_trials_found_done_in_the_store_count_as_done_from_the_first_publish():
    published = []
    live = ProgressPublisher({"a": 3}, workers=1, publish=lambda p, line: published.append(p), clock=_Clock())
    found = [(SimpleNamespace(index=i), SimpleNamespace(status=s)) for i, s in enumerate(["finished", "diverged"])]
    live.planned([_work(2)], ended=found)
    assert (published[-1]["done"], published[-1]["finished"], published[-1]["diverged"]) == (2, 1, 1)
    assert published[-1]["eta_s"] is None  # the trial left is a kind never timed


def test_the_progress_line_comes_off_a_description_and_only_it():
    progress = {"total": 4, "done": 1, "finished": 1, "running": 1, "elapsed_s": 5, "eta_s": None, "updated": 0}
    line = progress_line(progress)
    assert line.startswith(PROGRESS_MARK) and "ETA unknown" in line
    assert strip_progress(f"{line}\n\nabout it\n\n**a**") == "about it\n\n**a**"
    assert strip_progress("about it\n\n**a**") == "about it\n\n**a**"


# --- the terminal's view ---------------------------------------------------------------------------

def _progress(done=3, total=8, eta=12.0, **counts):
    return {"total": total, "done": done, "finished": done, "diverged": 0, "failed": 0, "pruned": 0,
            "running": 2, "elapsed_s": 20.0, "eta_s": eta, "updated": 0.0, "studies": {}} | counts


def _result(status="finished", epochs=4):
    return SimpleNamespace(status=status, final={"val_accuracy": 0.5, "train_loss": 1.25}, error=None,
                           epochs_run=epochs, seconds=0.3)


def _stack(size):
    return {"stack": SimpleNamespace(id="stack-1", size=size)}


def test_the_view_draws_the_study_bar_a_line_per_slot_and_each_search():
    search = SimpleNamespace(study=SimpleNamespace(name="lr"), level="tuned", stage=0, asked=7, rounds=4, finals=None,
                             spec=SimpleNamespace(strategy="tpe", stages=[1, 2], budget=24, metric="val_accuracy"),
                             best_so_far=lambda: (5, 0.8125))
    clock = _Clock()
    view = StudyView(8, lambda: _progress(), io.StringIO(), slots=3, searches=[search], live=False, clock=clock)
    view.start()
    members = [_trial(i, study="width", epochs=4) for i in range(4)]
    for trial in members:
        view.dlbench_trial_start(trial, None, _stack(4))
    view.dlbench_trial_start(_trial(7, study="depth", epochs=4), None, {})
    view.dlbench_epoch_end(members[0], 2, {"val_accuracy": 0.625, "train_loss": 1.5})
    view.dlbench_epoch_end(members[1], 2, {"val_accuracy": 0.1})  # a stack shows its first member's
    clock.now += 5  # the view counts down between snapshots
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(view.render())
    shown = console.export_text()
    assert re.search(r"3/8 trials \(0 diverged, 0 failed, 0 pruned\)  elapsed 25s  ETA 7s", shown), shown
    assert re.search(r"\[1\] +stack of 4: width/t0 and 3 more  epoch 2/4  val_acc 0.625  loss 1.500", shown), shown
    assert re.search(r"\[2\] +depth/t7  starting", shown) and re.search(r"\[3\] +idle", shown), shown
    assert "tune lr/tuned (tpe): stage 1/2, round 4, 7/24 trials asked; best val_accuracy 0.8125 (trial 5)" in shown, shown
    for trial in members:  # the stack's slot frees once every member ended
        view.dlbench_trial_end(trial, _result())
    console.print(view.render())
    assert re.search(r"\[1\] +idle", console.export_text())


def test_during_a_long_unit_the_view_takes_a_new_snapshot_each_second_not_only_a_countdown():
    clock, etas = _Clock(), iter([40.0, 38.0, 0.0])
    view = StudyView(8, lambda: _progress(eta=next(etas)), io.StringIO(), slots=1, live=True, clock=clock)
    view.start()
    try:
        trial = _trial(1, study="width", epochs=40)
        view.dlbench_trial_start(trial, None, {})
        clock.now += 30  # a unit that runs longer than the ETA said: the countdown alone would show 10 s
        view.dlbench_epoch_end(trial, 20, {"val_accuracy": 0.5})
        console = Console(file=io.StringIO(), width=160, record=True)
        console.print(view.render())
        assert "ETA 38s" in console.export_text()
    finally:
        view.stop()


def test_in_a_pipe_the_view_is_plain_lines_with_the_progress_now_and_then():
    out, clock = io.StringIO(), _Clock()
    view = StudyView(8, lambda: _progress(done=1), out, slots=2, live=None, clock=clock)
    assert not view.live  # not a terminal
    view.start()
    view.lines.write("a line of the run, ")
    view.lines.write("in two writes\n")
    trial = _trial(1, study="width", epochs=4)
    view.dlbench_trial_start(trial, None, {})
    view.dlbench_trial_end(trial, _result())
    view.show(_progress(done=2))
    clock.now += PLAIN_EVERY_S
    view.dlbench_trial_end(trial, _result("diverged", 2))
    view.show(_progress(done=3))
    view.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "a line of the run, in two writes"
    assert lines[1] == "[1/8] width/t1  finished (4 epochs, 0.3s)  val_acc 0.500  loss 1.250"
    assert lines[2].startswith("[1/8] width/t1  diverged (2 epochs")
    assert lines[3] == "progress: 3/8 trials done (3 finished, 0 diverged, 0 failed, 0 pruned), 2 running; " \
                       "elapsed 20s, ETA 12s"
    assert len(lines) == 4 and "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


# --- end to end: a terminal, a pipe, Ctrl-C ---------------------------------------------------------

STUDY = '[study]\nname = "shown"\nseeds = 2\n\n' + TINY_BASELINE.replace("epochs = 2", "epochs = 6") + """
[studies.width.levels]
narrow = {}
wide = { architecture = { width = 32 } }
"""

SLOW_EPOCHS = """
import time
from dlbench import hookimpl

@hookimpl
def dlbench_epoch_end(trial, epoch, metrics):
    time.sleep(0.3)
"""


def in_terminal(args: list, cwd: Path, until: str | None = None, timeout: float = 180) -> tuple[int, str]:
    """Run ``dlbench *args`` in a pseudo-terminal (160 columns); with ``until`` (a regular
    expression), Ctrl-C (SIGINT to its process group, as a terminal sends it) once what it drew
    matches. Returns (exit code, everything it wrote)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "dlbench.cli", *map(str, args)], cwd=cwd,
                            env=cli_env({"COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}),
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=ctrl_c_enabled)
    os.close(slave)
    out, sent, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
            if until and not sent and re.search(until, ESCAPES.sub("", out.decode(errors="replace"))):
                os.killpg(proc.pid, signal.SIGINT)
                sent = True
        else:
            pytest.fail(f"dlbench {args} did not end in {timeout} s:\n{out.decode(errors='replace')}")
        return proc.wait(timeout=60), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.slow
def test_a_study_in_a_terminal_draws_the_live_view_stops_on_ctrl_c_and_ends_with_the_summary(tmp_path, new_store):
    study = write_study(tmp_path, STUDY)
    write_plugin(tmp_path, "slow", SLOW_EPOCHS)  # a second or two a trial: the view draws them training
    args = ["run", study, "--tracking-uri", sqlite_uri(new_store(tmp_path)), "--jobs", "2"]
    # Ctrl-C once the view shows a worker's trial mid-training
    code, shown = in_terminal(args, tmp_path, until=r"\[[12]\] +width/\w+, seed=\d  epoch [1-5]/6")
    assert code == 130, shown
    text = ESCAPES.sub("", shown)
    assert "━" in shown and "\x1b[" in shown, shown  # rich's bar, redrawn in place
    assert re.search(r"\d/4 trials \(0 diverged, 0 failed, 0 pruned\)  elapsed \d+s  ETA", text), text
    assert "Interrupted: the finished trials are in MLflow" in text and "Traceback" not in text, text
    assert re.search(r"width/\w+, seed=\d  interrupted \(", text), text  # its trials ended as interrupted
    assert shown.rindex("\x1b[?25h") > shown.rindex("ETA"), shown  # the cursor is back after the last frame

    code, shown = in_terminal(args, tmp_path)  # the same command completes the study
    assert code == 0, shown
    text = ESCAPES.sub("", shown)
    assert "resuming run" in text and "Traceback" not in text, text
    assert "4/4 trials (0 diverged, 0 failed, 0 pruned)" in text, text
    last_frame = shown.rindex("4/4 trials")
    assert "\n4 finished (" in ESCAPES.sub("", shown[last_frame:]), shown  # the summary after the last frame
