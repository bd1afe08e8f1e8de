"""The plugin contract: what every registered component of every kind does, checked in a fraction
of a second on tiny inputs (as timm tests every registered model). ``dlbench plugins check`` runs
it on any component, ``tests/test_contract.py`` on every registered one.

Every component except a dataset is checked inside a tiny model: an MLP of width 32 (the
architecture itself when an architecture is checked) on a fixed batch of 32 random examples of
4 random classes, trained by Adam (lr 0.001, its usual default) unless the component is the optimizer. Its checks:

What a component NEEDS (a failure of any of these is a FAIL) and what it merely SUPPORTS (an
optional capability: offered and verified is a PASS, offered but broken a FAIL, not offered an
``INFO ... not supported`` line, never a failure, naming the study features that need it). Every
check runs whatever another found, except that a component that does not build skips the checks
that need it built.

Needed:

* **builds on a tiny input**: the model maps the batch to finite logits of shape [32, 4]. An
  architecture is built for every input shape it declares it accepts (see :func:`input_shapes`).
  A regularizer (or initializer) is checked in the first tiny setting it builds and steps in
  (:data:`SETTINGS`: an MLP on 1-D signals, then on 8x8 images).
* **a few optimizer steps lower the loss on a fixed batch**: the training objective (cross-entropy
  plus penalties, in train mode, the same random draws before and after) is lower after
  :data:`STEPS` steps. The loss is that of the whole tiny model, so a negative control that
  blocks the gradient by design (the ``step`` activation, a ``zeros`` initializer) passes through
  the parameters that still learn (the output layer, the biases); its gradcheck then says that no
  gradient flows through it.
* **the same seed gives identical parameters and outputs**: built and trained twice from one
  seed, every parameter and buffer and the eval-mode outputs are bit-identical.
* **eval mode is deterministic**: two eval-mode forward passes of the trained model are equal.
* **custom autograd passes a float64 gradcheck**: an activation always (the module alone, with its
  parameters); any other component when the autograd graph of the loss holds a custom
  ``torch.autograd.Function`` (``torch.autograd.gradcheck``, fast mode, in float64, with respect
  to the input and the parameters, the random draws replayed for every evaluation).
Optional capabilities:

* **exposes slots for dropout and normalization** (an architecture): ``dlbench.slots.Slot``
  modules, each ``norm`` and ``hidden`` slot's ``features``/``spatial_dims`` matching the tensor it
  sees; needed only by the regularizers that fill slots (dropout and its variants: input or hidden
  slots; batch/layer/group normalization: norm slots).
* **exposes hidden_blocks for layer-wise initializers** (an architecture): any sequence of modules
  (list, tuple, ``nn.ModuleList``, ``nn.Sequential``), the first taking the input batch, each the
  previous one's output; needed only by ``greedy_autoencoder``, ``greedy_rbm`` and ``dropconnect``.
* **a stacked step equals the members' own steps**, for a component that declares it stacks
  (see ``dlbench/stacking.py``): two members' outputs and gradients under ``vmap`` (architecture,
  activation) and, trained :data:`STEPS` steps in train mode and evaluated, their buffers (batch
  statistics: a buffer a training step changes fails it, naming the buffer), parameters and
  eval-mode logits, their parameters after three stacked updates (optimizer), the learning rate as a
  function of the step alone (schedule), the stacked penalty, gradient and parameter updates
  (regularizer), two members' parameters and random streams after an initializer's stacked form
  (initializer), each against the members trained (or initialized) one at a time.
* **its stacked step is CUDA-graph safe** (a stacked optimizer or regularizer that declares
  ``graph_safe = True``): it leaves its Python state (every value that is not a tensor, and which
  tensor objects it holds) as it was from one step to the next: a CUDA graph's replay runs only
  the kernels of the step it captured.

Kind-specific checks: an activation returns a fresh module per call and keeps the shape of
[B, F], [B, C, L] and [B, C, H, W] inputs; an optimizer resumes from its ``state_dict`` exactly;
a schedule keeps the learning rate finite and >= 0 and resumes from its ``state_dict``; a
regularizer's state survives a checkpoint (``torch.save``); an initializer keeps the model's
parameter names and shapes and leaves them finite; a dataset returns a ``dlbench.data.Dataset``
with float inputs, integer labels in [0, num_classes), matching split lengths and example shapes,
and the same content hash when built twice (a dataset that needs files is checked with the
options its author gives: ``--option path=...``).

Each check returns an :class:`Outcome`: passed, failed with a message saying what was expected and
what came instead (an exception names the plugin's line it came from), skipped with the reason
(not applicable, or not run because the component does not build), or an optional capability not
supported (:class:`Unsupported`); :func:`summary` counts them.
"""

from dlbench.contract.activations import fresh_module_per_call
from dlbench.contract.datasets import dataset_arrays, dataset_builds, dataset_hash
from dlbench.contract.generic import builds, eval_is_deterministic, gradcheck, lowers_the_loss, same_seed_same_result
from dlbench.contract.architectures import exposes_hidden_blocks, exposes_slots
from dlbench.contract.harness import CHECKS, OPTIONAL, TRAINS, check, resolve_options
from dlbench.contract.initializers import initializer_keeps_the_model
from dlbench.contract.optimizers import optimizer_resumes, optimizer_type
from dlbench.contract.outcome import FAIL, PASS, SKIP, UNSUPPORTED, Note, Outcome, Skip, Unsupported, passed, summary
from dlbench.contract.preprocessing import preprocessing_applies, preprocessing_is_a_function
from dlbench.contract.regularizers import regularizer_type
from dlbench.contract.schedules import schedule_rates
from dlbench.contract.stacked import STACK_ATOL, STACK_RTOL, graph_safe, stacks
from dlbench.contract.subject import (BATCH, CLASSES, COLOUR, IMAGE, ONE_D, REFERENCE_LR, SETTINGS, STEPS, TOTAL_STEPS,
                                      WIDTH, Subject, Trajectory, fixed_batch, input_shapes, tiny_data)

__all__ = [
    "BATCH", "CHECKS", "CLASSES", "COLOUR", "FAIL", "IMAGE", "ONE_D", "OPTIONAL", "PASS", "REFERENCE_LR", "SETTINGS",
    "SKIP", "STACK_ATOL", "STACK_RTOL", "STEPS", "TOTAL_STEPS", "TRAINS", "UNSUPPORTED", "WIDTH", "Note", "Outcome",
    "Skip", "Subject", "Trajectory", "Unsupported", "builds", "check", "dataset_arrays", "dataset_builds",
    "dataset_hash", "eval_is_deterministic", "exposes_hidden_blocks", "exposes_slots", "fixed_batch",
    "fresh_module_per_call", "gradcheck", "graph_safe", "initializer_keeps_the_model", "input_shapes",
    "lowers_the_loss", "optimizer_resumes", "optimizer_type", "passed", "preprocessing_applies",
    "preprocessing_is_a_function", "regularizer_type", "resolve_options", "same_seed_same_result", "schedule_rates",
    "stacks", "summary", "tiny_data",
]
