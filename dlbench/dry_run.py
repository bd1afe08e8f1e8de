"""``dlbench run --dry-run``: the trials of a study file as tables, with the stack each trains in."""

from __future__ import annotations

from dlbench.planning import initializer_groups, why_eager
from dlbench.study import first_of_each_config, identical_levels
from dlbench.trial import flatten


def trial_table(sf, trials, works, registry, graphs: bool = False) -> str:
    """One table per study: the trials with what varies between them (the study's factors) and
    the stack each trains in; then why the trials that train alone do, which members of a stack
    initialize at once (greedy pretraining) and, with CUDA graphs, why a stack steps eagerly."""
    stack_of, alone = {}, {}
    for number, work in enumerate(works, start=1):
        for t in work.members:
            stack_of[t.index] = f"S{number}({len(work.members)})" if work.stacked else "alone"
        if not work.stacked:
            alone.setdefault(work.alone_because, []).append(work.members[0])
    same = first_of_each_config(trials)
    for index, first in same.items():
        stack_of[index] = f"= #{first.index}"
    blocks = []
    for study in dict.fromkeys(t.study for t in trials):
        group = [t for t in trials if t.study == study]
        varied = _varied_keys(group)
        header = ["#", "level", "seed", "config_hash", "stack", *varied]
        rows = [[str(t.index), t.level, str(t.seed), t.config_hash[:12], stack_of[t.index],
                 *[_flat(t).get(k, "") for k in varied]] for t in group]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        blocks.append(f"study {study!r} ({len(group)} trials)\n" + "\n".join(lines))
    stacks = sum(w.stacked for w in works)
    summary = (f"{len(works)} units of work: {stacks} stacks (S<n>(members): trained together as one model) "
               f"and {sum(map(len, alone.values()))} trials alone" + (
                   f"; {len(same)} trials the same as an earlier one (= #n: trained once, recorded under both)"
                   if same else ""))
    if alone:
        summary += ":\n" + "\n".join(_why_alone(reason, alone_trials) for reason, alone_trials in alone.items())
    if any(len(w.members) == 1 and w.stacked for w in works):
        summary += "\nOn a GPU, a stack of one (S<n>(1)) replays its steps from CUDA graphs."
    together = [f"  S{n}: {w.members[group[0]].config['initializer']['name']}, {len(group)} of its "
                f"{len(w.members)} members at once" for n, w in enumerate(works, start=1) if w.stacked
                for group, _ in initializer_groups(w, registry)]
    if together:
        summary += "\nmembers initialized at once (a stacked initializer, the same options):\n" + "\n".join(together)
    if graphs:
        eager = [f"  S{n}: {why}" for n, w in enumerate(works, start=1)
                 if w.stacked and (why := why_eager(w.members[0], registry))]
        if eager:
            summary += "\nstacks that step eagerly (no CUDA graphs):\n" + "\n".join(eager)
    pairs = identical_levels(trials)
    if pairs:
        summary += ("\nlevels that resolve to the same configuration (equal config hashes): a trial of the second "
                    "trains once, as the first's (= #n), and is recorded under its own study; within one study their "
                    "difference is zero by construction:\n"
                    + "\n".join(f"  {a} = {b} ({n} seed{'s' if n != 1 else ''} in common)" for a, b, n in pairs))
    studies = len({t.study for t in trials})
    in_studies = f"{studies} study" if studies == 1 else f"{studies} studies"
    return ("\n\n".join(blocks) + f"\n\n{summary}\n\n{len(trials)} trials in {in_studies} from {sf.path} "
            "(dry run: nothing trained)")


def _why_alone(reason: str, trials: list) -> str:
    """One line for the trials that train alone for one reason: the trial itself when it is the
    only one, else their numbers (runs of consecutive numbers as ranges)."""
    if len(trials) == 1:
        return f"  #{trials[0].index} {trials[0].title}: {reason}"
    spans: list[list[int]] = []
    for index in sorted(t.index for t in trials):
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    numbers = ", ".join(f"#{a}" if a == b else f"#{a}-#{b}" for a, b in spans)
    return f"  {len(trials)} trials ({numbers}): {reason}"


def _flat(trial) -> dict[str, str]:
    return flatten({k: v for k, v in trial.config.items() if k != "seed"})


def _varied_keys(trials) -> list[str]:
    """The config keys whose values differ between trials: what the study varies."""
    flats = [_flat(t) for t in trials]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]
