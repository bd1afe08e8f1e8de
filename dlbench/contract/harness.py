"""Running the contract: which checks each kind runs (:data:`CHECKS`: what a component needs, then
the optional capabilities it may support), the component's options resolved over its defaults,
and every check run into an :class:`Outcome`. Every check runs, whatever another found, except
that a component that does not build skips the checks that need it built."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

from dlbench.contract.activations import fresh_module_per_call
from dlbench.contract.architectures import exposes_hidden_blocks, exposes_slots
from dlbench.contract.datasets import dataset_arrays, dataset_builds, dataset_hash
from dlbench.contract.generic import builds, eval_is_deterministic, gradcheck, lowers_the_loss, same_seed_same_result
from dlbench.contract.initializers import initializer_keeps_the_model
from dlbench.contract.losses import loss_is_per_example, loss_per_example
from dlbench.contract.optimizers import optimizer_resumes, optimizer_type
from dlbench.contract.outcome import FAIL, PASS, SKIP, UNSUPPORTED, Note, Outcome, Skip, Unsupported
from dlbench.contract.preprocessing import preprocessing_applies, preprocessing_is_a_function
from dlbench.contract.regularizers import regularizer_type
from dlbench.contract.schedules import schedule_rates
from dlbench.contract.stacked import graph_safe, stacks
from dlbench.contract.subject import Subject
from dlbench.errors import UserError
from dlbench.preflight import untouched_global_state
from dlbench.schema import check as check_value, coerce

TRAINS = [lowers_the_loss, same_seed_same_result, eval_is_deterministic, gradcheck, stacks]
# the checks of optional capabilities: a component without one is reported (UNSUPPORTED), not failed
OPTIONAL = [exposes_slots, exposes_hidden_blocks, stacks, graph_safe]
CHECKS: dict[str, list[Callable[[Subject], str | None]]] = {
    "architecture": [builds, lowers_the_loss, same_seed_same_result, eval_is_deterministic, gradcheck,
                     exposes_slots, exposes_hidden_blocks, stacks],
    "activation": [builds, fresh_module_per_call, *TRAINS],
    "initializer": [builds, initializer_keeps_the_model, lowers_the_loss, same_seed_same_result, gradcheck, stacks],
    "optimizer": [builds, optimizer_type, lowers_the_loss, same_seed_same_result, optimizer_resumes, stacks,
                  graph_safe],
    "schedule": [builds, schedule_rates, lowers_the_loss, same_seed_same_result, stacks],
    "regularizer": [builds, regularizer_type, *TRAINS, graph_safe],
    "dataset": [dataset_builds, dataset_arrays, dataset_hash],
    "preprocessing": [preprocessing_applies, preprocessing_is_a_function],
    "loss": [loss_per_example, loss_is_per_example],
}


def check(component, registry, options: dict | None = None) -> list[Outcome]:
    """Run the contract of ``component``'s kind on it, with ``options`` over its defaults.

    Raises :class:`UserError` for options that do not fit the component or required options
    not given; everything the component itself does wrong is a failed :class:`Outcome`.
    """
    checks = CHECKS.get(component.kind)
    if checks is None:
        raise UserError(f"dlbench has no contract for the {component.kind} kind yet")
    subject = Subject(component, registry, resolve_options(component, options or {}))
    outcomes: list[Outcome] = []
    with untouched_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a schedule stepped without optimizer steps, on purpose
        for fn in checks:
            name = inspect.getdoc(fn).splitlines()[0]
            if outcomes and outcomes[0].status == FAIL:
                outcomes.append(Outcome(subject.label, name, SKIP, "not run: it does not build"))
                continue
            outcomes.append(_run(fn, subject, name))
    return outcomes


def resolve_options(component, given: dict) -> dict:
    """The defaults with ``given`` over them, each given value checked against the option's type
    and domain (``--option lr: must be > 0, got -1.0``)."""
    problems = []
    for key, value in given.items():
        option = component.options.get(key)
        if option is None:
            problems.append(f"--option {key}: {component.kind} {component.name!r} has no option {key!r}; "
                            f"its options: {', '.join(component.options) or 'none'}")
        elif problem := check_value(value, option.annotation, f"--option {key}"):
            problems.append(problem)
    missing = [o.name for o in component.options.values() if o.required and o.name not in given]
    if missing:
        problems.append(f"{component.kind} {component.name!r} requires option{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}: give {' '.join(f'--option {m}=...' for m in missing)}")
    if problems:
        raise UserError("; ".join(problems))
    defaults = {o.name: o.default for o in component.options.values() if not o.required}
    return defaults | {k: coerce(v, component.options[k].annotation) for k, v in given.items()}


def _run(fn, subject: Subject, name: str) -> Outcome:
    try:
        message = fn(subject)
    except Skip as why:
        return Outcome(subject.label, name, SKIP, str(why))
    except Unsupported as why:
        return Outcome(subject.label, name, UNSUPPORTED, str(why))
    except UserError as exc:
        if subject.kind == "dataset":  # its files are missing or unreadable: the user's to fix (exit 2)
            raise
        return Outcome(subject.label, name, FAIL, subject.raised(exc))
    except Exception as exc:
        return Outcome(subject.label, name, FAIL, subject.raised(exc))
    return Outcome(subject.label, name, PASS if message is None or isinstance(message, Note) else FAIL,
                   message or "")
