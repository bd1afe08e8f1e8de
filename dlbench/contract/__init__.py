"""The plugin contract: what every registered component of every kind does, checked in a fraction
of a second on tiny inputs (as timm tests every registered model). ``dlbench plugins check`` runs
it on any component, ``tests/test_contract.py`` on every registered one.

Every component except a dataset is checked inside a tiny model: an MLP of width 32 (the
architecture itself when an architecture is checked) on a fixed batch of 32 random examples of
4 random classes, trained by Adam (lr 0.001, its usual default) unless the component is the optimizer. Its checks:

* **builds on a tiny input**: the model maps the batch to finite logits of shape [32, 4]. An
  architecture is built for every input shape it declares it accepts (see :func:`input_shapes`)
  and must expose the slots regularizers fill (``input``, ``norm``, ``hidden``; each ``norm``
  and ``hidden`` slot's ``features``/``spatial_dims`` matching the tensor it sees) and
  ``hidden_blocks``. A regularizer (or initializer) is checked in the first tiny setting it
  builds and steps in (:data:`SETTINGS`: an MLP on 1-D signals, then on 8x8 images).
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
* **a stacked step equals the members' own steps**, for a component that declares it stacks
  (see ``dlbench/stacking.py``): two members' outputs and gradients under ``vmap`` (architecture,
  activation), their parameters after three stacked updates (optimizer), the learning rate as a
  function of the step alone (schedule), the stacked penalty, gradient and parameter updates
  (regularizer), two members' parameters and random streams after an initializer's stacked form
  (initializer), each against the members trained (or initialized) one at a time. A stacked optimizer or
  regularizer that declares ``graph_safe = True`` must also leave its Python state (every value
  that is not a tensor, and which tensor objects it holds) as it was from one step to the next:
  a CUDA graph's replay runs only the kernels of the step it captured.

Kind-specific checks: an activation returns a fresh module per call and keeps the shape of
[B, F], [B, C, L] and [B, C, H, W] inputs; an optimizer resumes from its ``state_dict`` exactly;
a schedule keeps the learning rate finite and >= 0 and resumes from its ``state_dict``; a
regularizer's state survives a checkpoint (``torch.save``); an initializer keeps the model's
parameter names and shapes and leaves them finite; a dataset returns a ``dlbench.data.Dataset``
with float inputs, integer labels in [0, num_classes), matching split lengths and example shapes,
and the same content hash when built twice (a dataset that needs files is checked with the
options its author gives: ``--option path=...``).

Each check returns an :class:`Outcome`: passed, failed with a message saying what was expected and
what came instead (an exception names the plugin's line it came from), or skipped with the
reason (not applicable, or not run because the component does not build).
"""

from dlbench.contract.activations import fresh_module_per_call
from dlbench.contract.datasets import dataset_arrays, dataset_builds, dataset_hash
from dlbench.contract.generic import builds, eval_is_deterministic, gradcheck, lowers_the_loss, same_seed_same_result
from dlbench.contract.harness import CHECKS, TRAINS, check, resolve_options
from dlbench.contract.initializers import initializer_keeps_the_model
from dlbench.contract.optimizers import optimizer_resumes, optimizer_type
from dlbench.contract.outcome import FAIL, PASS, SKIP, Note, Outcome, Skip, passed
from dlbench.contract.preprocessing import preprocessing_applies, preprocessing_is_a_function
from dlbench.contract.regularizers import regularizer_type
from dlbench.contract.schedules import schedule_rates
from dlbench.contract.stacked import STACK_ATOL, STACK_RTOL, stacks
from dlbench.contract.subject import (BATCH, CLASSES, COLOUR, IMAGE, ONE_D, REFERENCE_LR, SETTINGS, STEPS, TOTAL_STEPS,
                                      WIDTH, Subject, Trajectory, fixed_batch, input_shapes, tiny_data)

__all__ = [
    "BATCH", "CHECKS", "CLASSES", "COLOUR", "FAIL", "IMAGE", "ONE_D", "PASS", "REFERENCE_LR", "SETTINGS", "SKIP",
    "STACK_ATOL", "STACK_RTOL", "STEPS", "TOTAL_STEPS", "TRAINS", "WIDTH", "Note", "Outcome", "Skip", "Subject",
    "Trajectory", "builds", "check", "dataset_arrays", "dataset_builds", "dataset_hash", "eval_is_deterministic",
    "fixed_batch", "fresh_module_per_call", "gradcheck", "initializer_keeps_the_model", "input_shapes",
    "lowers_the_loss", "optimizer_resumes", "optimizer_type", "passed", "preprocessing_applies",
    "preprocessing_is_a_function", "regularizer_type", "resolve_options", "same_seed_same_result", "schedule_rates",
    "stacks", "tiny_data",
]
