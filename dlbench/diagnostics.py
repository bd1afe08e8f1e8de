"""Training diagnostics: what Glorot & Bengio (2010) plotted, recorded every N optimizer steps.

At step 1 and every ``diagnostics_every`` steps (a baseline key; 0 turns it off) the
:class:`Diagnostics` observer measures, right after ``loss.backward()``:

* per weight layer (every module owning a weight matrix/kernel, in model order; the last one is
  usually the output layer): the L2 norm of the weight's gradient (``grad_norm.layer<k>``)
  and of the weight itself (``weight_norm.layer<k>``);
* per activation layer (every module of the trial's activation type, in model order), on a fixed
  probe batch of training examples, in eval mode and without gradients: the mean and standard
  deviation of the activations (``act_mean``, ``act_std``), the fraction of values
  within 0.03 of a bound of a saturating nonlinearity (``act_saturation``: sigmoid < 0.03 or
  > 0.97, |tanh| > 0.97) and the fraction of dead rectified units, zero for every probe example
  (``dead_relu``);
* the training progress in epochs (``epoch``: the step divided by the steps per epoch).

Every name is logged under the prefix ``diag per step/`` (:data:`PREFIX`; ``diag.`` in stores
written before it): MLflow's UI groups a run's charts by the part before ``/``, so these charts sit
in their own section, apart from the per-epoch headline metrics, and say that their step is the
optimizer step. The learning rate is not repeated here: ``lr`` is logged per epoch with the other
headline metrics. The values leave through the ``dlbench_diagnostics`` hook (the MLflow tracker
logs them with the optimizer step as the metric step). Nothing here touches the gradients or
draws random numbers, so a trial trains identically with diagnostics on or off.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlbench import hookimpl
from dlbench.slots import Slot

PROBE_SIZE = 512  # training examples in the probe batch: enough for stable statistics, cheap to run
PREFIX = "diag per step/"  # every diagnostic's metric name starts with it (older stores: "diag.")
MARGIN = 0.03  # "saturated": within this distance of a bound of the nonlinearity
SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Hardsigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0),
              nn.Softsign: (-1.0, 1.0), nn.Hardtanh: (-1.0, 1.0)}
RECTIFIED = (nn.ReLU, nn.ReLU6)
# Recognised as activations when the trial's activation type cannot be made (no registry).
KNOWN_ACTIVATIONS = (*SATURATING, *RECTIFIED, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU, nn.SELU,
                     nn.CELU, nn.Mish, nn.Softplus)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that own a weight matrix or kernel (Linear, Conv, ...), in model order."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() > 1]


def activation_layers(model: nn.Module, activation_type: type | None = None) -> list[nn.Module]:
    """The model's activation modules in model order: those of ``activation_type`` (the trial's
    activation) when given, else any well-known nonlinearity. Empty slots are not activations."""
    slot_inners = {id(s.inner) for s in model.modules() if isinstance(s, Slot)}
    if activation_type is None:
        return [m for m in model.modules() if isinstance(m, KNOWN_ACTIVATIONS)]
    return [m for m in model.modules() if type(m) is activation_type and id(m) not in slot_inners]


def _saturation(module: nn.Module, a: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(name, fraction) for a saturating or rectified activation's output ``a`` (examples x units)."""
    if isinstance(module, RECTIFIED):
        return "dead_relu", (a.amax(0) <= 0).float().mean()  # a unit is dead if no example activates it
    for kind, (low, high) in SATURATING.items():
        if isinstance(module, kind):
            if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
                low, high = module.min_val, module.max_val
            return "act_saturation", ((a < low + MARGIN) | (a > high - MARGIN)).float().mean()
    return None


class Diagnostics:
    """An observer: registered by the runner for the duration of a study.

    ``hook`` is the plugin manager's hook relay (the values are emitted through it); ``registry``
    identifies the trial's activation modules by the type its activation plugin makes.
    """

    def __init__(self, hook, registry=None, probe_size: int = PROBE_SIZE):
        self.hook = hook
        self.registry = registry
        self.probe_size = probe_size
        # per trial being watched (several at once when trials train stacked): every, layers, activations
        self._watched: dict[int, tuple[int, list[nn.Module], list[nn.Module]]] = {}

    def _activation_type(self, trial) -> type | None:
        spec = trial.config.get("activation")
        if self.registry is None or not isinstance(spec, dict) or not self.registry.has("activation", spec["name"]):
            return None
        factory = self.registry.get("activation", spec["name"]).factory
        with torch.random.fork_rng(devices=[]):  # a factory drawing random numbers must not shift training
            return type(factory(**{k: v for k, v in spec.items() if k != "name"}))

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        every = int(trial.config.get("diagnostics_every", 0) or 0)
        if every:
            self._watched[trial.index] = (every, weight_layers(model),
                                          activation_layers(model, self._activation_type(trial)))

    @hookimpl
    def dlbench_after_backward(self, trial, model, optimizer, step: int, data) -> None:
        every = self._watched.get(trial.index, (0,))[0]
        if not every or (step != 1 and step % every):
            return
        values = self.measure(model, optimizer, data, trial.index)
        steps_per_epoch = math.ceil(len(data.y_train) / trial.config["batch_size"])
        values[f"{PREFIX}epoch"] = step / steps_per_epoch
        self.hook.dlbench_diagnostics(trial=trial, step=step, values=values)

    @hookimpl
    def dlbench_trial_end(self, trial, result) -> None:
        self._watched.pop(trial.index, None)

    def measure(self, model: nn.Module, optimizer, data, key: int) -> dict[str, float]:
        """Every diagnostic of the model as it is now: one device sync for all of them."""
        _, layers, activations = self._watched[key]
        names: list[str] = []
        tensors: list[torch.Tensor] = []
        nan = torch.tensor(math.nan, device=data.x_train.device)
        for k, layer in enumerate(layers):
            grad = layer.weight.grad
            names += [f"{PREFIX}grad_norm.layer{k}", f"{PREFIX}weight_norm.layer{k}"]
            tensors += [grad.detach().norm() if grad is not None else nan, layer.weight.detach().norm()]
        names_acts, tensors_acts = self._activation_stats(model, activations, data.x_train[:self.probe_size])
        names += names_acts
        tensors += tensors_acts
        return dict(zip(names, torch.stack([t.float() for t in tensors]).tolist())) if tensors else {}

    def _activation_stats(self, model: nn.Module, activations: list[nn.Module],
                          probe: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
        names: list[str] = []
        tensors: list[torch.Tensor] = []

        def record(k):
            def hook(module, inputs, output):
                a = output.detach().flatten(1).float()
                names.extend([f"{PREFIX}act_mean.layer{k}", f"{PREFIX}act_std.layer{k}"])
                tensors.extend([a.mean(), a.std()])
                sat = _saturation(module, a)
                if sat is not None:
                    names.append(f"{PREFIX}{sat[0]}.layer{k}")
                    tensors.append(sat[1])
            return hook

        if not activations:
            return names, tensors
        handles = [m.register_forward_hook(record(k)) for k, m in enumerate(activations)]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(probe)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return names, tensors
