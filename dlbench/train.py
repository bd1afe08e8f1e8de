"""One trial's training loop: built (``build.py``), trained for N epochs, evaluated every epoch.

The loop knows nothing of MLflow or progress bars: it calls the lifecycle hooks
(``dlbench_trial_start``, ``dlbench_after_backward``, ``dlbench_epoch_end``, ``dlbench_trial_end``)
and observers subscribe.
The whole dataset is already on the device (see ``data.py``); batches are index gathers.
"""

from __future__ import annotations

import math
import time

import torch

from dlbench.build import (CrossEntropy, build, build_loss, build_model, build_optimizer, make, mean_loss,
                           seed_everything, sum_loss)
from dlbench.checkpoints import Checkpoints, rng_state, set_rng_state
from dlbench.data import DeviceData
from dlbench.trial import Trial, TrialInfo, TrialResult
from dlbench.verdict import StopRule

# what other modules import from here (the build, the checkpoints, the RNG states and
# TrialResult are defined elsewhere: dlbench.build, dlbench.checkpoints, dlbench.trial)
__all__ = ["EVAL_CHUNK", "Checkpoints", "TrialResult", "build", "build_loss", "build_model", "build_optimizer", "end_training",
           "evaluate", "exact_accuracies", "make", "order_generator_after_build", "record_epoch", "replay_history",
           "rng_state", "run_trial", "seed_everything", "set_rng_state", "train_epoch", "train_steps", "training_loss",
           "update"]

EVAL_CHUNK = 8192  # examples per forward pass at evaluation: bounded memory, few launches


cross_entropy = CrossEntropy()  # plain cross-entropy: the loss of a config without one (``build_loss``)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DeviceData, loss=cross_entropy) -> dict[str, float]:
    """Loss (``loss``, per example: the trial's, ``build_loss``) and accuracy on every split, in
    eval mode, with a single device sync at the end."""
    model.eval()
    names, values = [], []
    for split, (x, y) in data.splits().items():
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device)
        for xb, yb in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK)):
            logits = model(xb)
            loss_sum += sum_loss(loss, logits, yb)
            correct += (logits.argmax(1) == yb).sum()
        names += [f"{split}_loss", f"{split}_correct"]
        values += [loss_sum / len(y), correct]
    return exact_accuracies(dict(zip(names, torch.stack(values).tolist())), data)  # CPU-GPU sync point


def exact_accuracies(row: dict[str, float], data: DeviceData) -> dict[str, float]:
    """``<split>_correct`` counts -> ``<split>_accuracy`` = count / n in float64 (680 of 1000 is
    0.68 exactly, not float32's 0.6800000071525574). Counts are exact in float32 up to 2**24."""
    sizes = {split: len(y) for split, (_, y) in data.splits().items()}
    out = {}
    for key, value in row.items():
        split = key.removesuffix("_correct")
        if split == key:
            out[key] = value
        else:
            out[f"{split}_accuracy"] = round(value) / sizes[split]
    return out


def train_epoch(model, regularizers, optimizer, schedule, data: DeviceData, batch_size: int,
                hook=None, trial: Trial | None = None) -> None:
    """One pass over the training set, its optimizer steps numbered from 1 (:func:`train_steps`
    numbers them over a whole trial)."""
    train_steps((model, regularizers, optimizer, schedule), data, batch_size, hook, trial, first_step=0)


def train_steps(parts: tuple, data: DeviceData, batch_size: int, hook, trial: Trial | None, first_step: int,
                loss=cross_entropy) -> None:
    """One pass over the training set with ``parts``: the model, regularizers, optimizer and
    schedule, as :func:`build` returns them, and ``loss`` (per example, :func:`build_loss`).
    ``first_step`` counts the optimizer steps taken before (the after-backward observers see
    each step's number over the whole trial)."""
    model, regularizers, optimizer, schedule = parts
    model.train()
    n = len(data.y_train)
    order = torch.randperm(n, device=data.x_train.device)  # drawn on the device: no host round-trip
    for step, idx in enumerate(order.split(batch_size), start=first_step + 1):
        objective = training_loss(model, regularizers, data.x_train[idx], data.y_train[idx], loss)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if hook is not None:  # observers (diagnostics) see the raw gradients; ~1 us when nobody listens
            hook.dlbench_after_backward(trial=trial, model=model, optimizer=optimizer, step=step, data=data)
        update(model, regularizers, optimizer, schedule)


def training_loss(model, regularizers, x: torch.Tensor, y: torch.Tensor, loss=cross_entropy) -> torch.Tensor:
    """The loss of one training batch: the regularizers' batch transforms, the forward pass,
    the mean of ``loss`` over the batch (the trial's, per example: :func:`build_loss`), the
    regularizers' penalties."""
    for reg in regularizers:
        x, y = reg.transform_batch(x, y)
    objective = mean_loss(loss, model(x), y)
    for reg in regularizers:
        objective = objective + reg.penalty(model)
    return objective


def update(model, regularizers, optimizer, schedule) -> None:
    """What follows the backward pass: gradient-acting regularizers, the optimizer step, the
    schedule's step (none: no schedule), parameter-acting regularizers."""
    for reg in regularizers:
        reg.before_step(model)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    for reg in regularizers:
        reg.after_step(model)


def run_trial(trial: Trial, registry, data: DeviceData, device: torch.device, hook,
              checkpoints: Checkpoints | None = None) -> TrialResult:
    """Train one trial and return its result; exceptions propagate (the runner records them).

    With ``checkpoints``, the state is saved at epoch ends (at most every ``every_seconds``) and a
    trial that finds a checkpoint resumes after its epoch, replaying the recorded epochs to the
    observers first; observers flush at each checkpoint (``dlbench_checkpoint``), so nothing they
    recorded before it is lost.
    """
    started = time.perf_counter()
    seed_everything(trial.seed)
    parts = build(trial, registry, data, device)
    model, regularizers, optimizer, schedule = parts
    loss = build_loss(trial.config, registry, data.num_classes)
    resumed = checkpoints.restore(model, optimizer, schedule, regularizers) if checkpoints else None
    info = TrialInfo.of(trial, model, data, device, resumed_from_epoch=resumed["epoch"] if resumed else None)
    hook.dlbench_trial_start(trial=trial, model=model, info=info)

    result = TrialResult(status="finished")
    first = 0
    if resumed:
        result.history = resumed["history"]
        replay_history(result, resumed["epoch"], hook, trial)
        first = resumed["epoch"] + 1
    rule = StopRule(trial, regularizers)
    for epoch in range(first, trial.config["epochs"] + 1):
        if epoch > 0:  # epoch 0 records the initialized model, before any step
            batch_size = trial.config["batch_size"]
            train_steps(parts, data, batch_size, hook, trial,
                        first_step=(epoch - 1) * math.ceil(len(data.y_train) / batch_size), loss=loss)
        metrics = evaluate(model, data, loss)
        if epoch > 0 and hasattr(schedule, "epoch_end"):  # e.g. plateau: follows the validation loss
            schedule.epoch_end(epoch, metrics)
        metrics["lr"] = optimizer.param_groups[0]["lr"]  # the rate of the next step
        record_epoch(result, epoch, metrics, hook, trial)
        status = rule.verdict(epoch, metrics, result.history, model)
        if status is not None:
            result.status = status
            break
        if checkpoints and checkpoints.due():
            hook.dlbench_checkpoint(trial=trial, epoch=epoch)
            checkpoints.save(epoch, model, optimizer, schedule, regularizers, result)
    end_training(model, regularizers, data, result, optimizer.param_groups[0]["lr"], hook, trial, loss)
    if checkpoints:
        checkpoints.clear()
    result.seconds = time.perf_counter() - started
    return result


def record_epoch(result: TrialResult, epoch: int, metrics: dict[str, float], hook, trial: Trial) -> None:
    """An evaluated epoch: one more row of the history, the trial's final metrics so far, shown
    to the observers (``dlbench_epoch_end``)."""
    result.history.append(metrics)
    result.final, result.epochs_run = metrics, epoch
    hook.dlbench_epoch_end(trial=trial, epoch=epoch, metrics=metrics)


def replay_history(result: TrialResult, epoch: int, hook, trial: Trial) -> None:
    """A trial resumed after ``epoch`` with the history of its checkpoint: the observers see its
    epochs again (they may have missed the last ones); the last is its final metrics so far."""
    for e, metrics in enumerate(result.history):
        hook.dlbench_epoch_end(trial=trial, epoch=e, metrics=metrics)
    if result.history:
        result.final, result.epochs_run = result.history[-1], epoch


def end_training(model, regularizers, data: DeviceData, result: TrialResult, lr: float, hook, trial: Trial,
                 loss=cross_entropy) -> None:
    """Training is over: a regularizer may change the final weights (early stopping restores the
    best epoch's). If one did, the model is evaluated again and that evaluation recorded as one
    more row of the history (its epoch: the last trained one + 1) and as the trial's final
    metrics; ``epochs_run`` stays the number of epochs trained. Not for a diverged trial."""
    if result.status != "finished" or not any([reg.end_of_training(model) for reg in regularizers]):
        return
    metrics = evaluate(model, data, loss) | {"lr": lr}
    result.history.append(metrics)
    result.final = metrics
    hook.dlbench_epoch_end(trial=trial, epoch=len(result.history) - 1, metrics=metrics)


def order_generator_after_build(device: torch.device) -> torch.Generator:
    """A generator continuing the global stream where it stands now (after a trial's model was
    built and initialized): it draws the batch orders a trial trained alone draws next."""
    generator = torch.Generator(device=device)
    generator.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return generator
