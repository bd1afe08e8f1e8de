"""Every dlbench hook, in one file. Each docstring is the contract a plugin implements.

Two families:

* **Registration hooks** (``dlbench_register_<kind>``) hand the plugin a ``register`` callback.
  ``register(name, factory)`` adds one component. The factory is a plain function or class; its
  *keyword-only* parameters are the options a study file may set, and their annotations and
  defaults are the schema dlbench validates against. The positional parameters are the call
  contract of the kind, listed in each hook below. The docstring's first paragraph is the
  description shown by ``dlbench plugins list``; cite the source of the technique there.

**Options.** An option's type is one a TOML study file can give: ``bool``, ``int``, ``float``
(an integer is accepted and made a float), ``str``, ``Literal[...]`` of those, ``list[X]``, a
union such as ``X | None`` (TOML has no null: ``None`` can only be the default), or no annotation
(any value, unchecked). Its domain is declared with ``typing.Annotated`` and dlbench's
constraints: ``Range(gt=, ge=, lt=, le=)`` for an ``int`` or ``float`` (at most one lower and one
upper bound; NaN and infinities are in no range) and ``Length(min=, max=)`` for a ``list`` or
``str``. A value outside the type or the domain is reported before anything trains, at the key
path the user wrote (``studies.lr.levels.high.optimizer.lr: must be > 0, got -1.0``), so the
factory need not check it again. A factory with an option of any other type (``dict``, a class,
``torch.Tensor``, a callable, ``tuple``, a name imported only under ``TYPE_CHECKING``), or a
default outside its own type and domain, is refused when it registers. Example::

    from typing import Annotated, Literal
    from dlbench import Length, Range, hookimpl

    def my_sgd(params, *,
               lr: Annotated[float, Range(gt=0)] = 0.1,                  # lr > 0
               momentum: Annotated[float, Range(ge=0, lt=1)] = 0.9,      # 0 <= momentum < 1
               milestones: list[Annotated[float, Range(ge=0, le=1)]] = [0.5],   # each in [0, 1]
               warmup_steps: Annotated[int, Range(ge=1)] | None = None,  # None or >= 1
               layers: Annotated[list[str], Length(min=1)] = ["all"],    # a non-empty list
               mode: Literal["heavy_ball", "nesterov"] = "heavy_ball"):
        ...

``dlbench plugins list`` shows each option with its domain (``lr: float > 0, default 0.1``).

* **Lifecycle hooks** are called by the training loop, so observers (progress display, MLflow
  tracking, diagnostics) can follow a trial without the loop knowing about them.

Built-in components are registered through exactly these hooks (``dlbench plugins list`` shows them).

**Stacking.** Trials that share a training loop train together as one stacked model (parameters
stacked along a member axis, the forward pass batched by ``torch.func.vmap``; see
``dlbench.stackable`` in the API reference). A component takes part only when it says how; anything else trains
alone and ``dlbench run --dry-run`` names it:

* architecture, activation, schedule: decorate the factory with ``@dlbench.stackable`` when its
  module's forward is a pure function of parameters, buffers and input (no in-place buffer
  updates such as BatchNorm's running statistics, no ``.item()``, no data-dependent Python
  branches), or, for a schedule, when the learning rate depends on the step alone;
* optimizer: ``@stackable(stacked=MyStacked)``, where ``MyStacked`` subclasses
  ``dlbench.StackedOptimizer`` and updates stacked parameters with every numeric option
  given as one value per member;
* regularizer: a ``stacked(members)`` classmethod returning a
  ``dlbench.StackedRegularizer`` (one that only decides when to stop needs none);
* initializer: nothing to do: initializers run per member, on each member's own model, before
  stacking. One that trains (greedy pretraining) may add a stacked form,
  ``@stackable(stacked=f)`` with ``f(models, data, streams, **options)``, that initializes the
  members sharing its options at once; it must leave each model and each member's random stream
  as the plain form would (draw member ``i``'s values inside ``with streams.member(i):`` or with
  ``generator=streams.generator(i, device)``; see ``dlbench.stacking.MemberStreams`` and
  ``greedy_autoencoder_stacked``, which ``dlbench plugins show greedy_autoencoder`` locates);
* dataset, preprocessing: nothing to do (trials stack only with trials of the same dataset and
  preprocessing).

Example, a stackable activation and optimizer::

    from dlbench import StackedOptimizer, hookimpl, stackable

    @stackable
    def swish(*, beta: float = 1.0) -> nn.Module:
        '''Swish x * sigmoid(beta x) (Ramachandran et al. 2017).'''
        return Swish(beta)

    class StackedSignSGD(StackedOptimizer):
        graph_safe = True                            # tensor work only: a CUDA graph may replay it

        @torch.no_grad()
        def step(self, params, lr):                  # lr: [N], one per member
            for p in params:                         # p: [N, ...], p.grad likewise
                p.sub_(self.per_member(lr, p) * p.grad.sign())
            self.tick(lr)                            # the step count, on the device

    @stackable(stacked=StackedSignSGD)
    def sign_sgd(params, *, lr: float = 0.01) -> torch.optim.Optimizer:
        '''signSGD (Bernstein et al. 2018).'''
        return SignSGD(params, lr=lr)
"""

from __future__ import annotations

from typing import Any

import pluggy

from dlbench.trial import Trial, TrialInfo, TrialResult

hookspec = pluggy.HookspecMarker("dlbench")


# -- registration -------------------------------------------------------------------------------


@hookspec
def dlbench_register_datasets(register) -> None:
    """Register datasets. Factory: ``f(*, **options) -> dlbench.Dataset``.

    The factory returns the train and test arrays (numpy); dlbench carves the validation split
    from the training set and moves the tensors to the trial's device. Example::

        @hookimpl
        def dlbench_register_datasets(register):
            register("my_npz", my_npz)

        def my_npz(*, path: str) -> Dataset:
            \"\"\"Arrays from an .npz file with x_train, y_train, x_test, y_test.\"\"\"
    """


@hookspec
def dlbench_register_architectures(register) -> None:
    """Register architectures. Factory: ``f(input_shape, num_classes, activation, *, **options)``.

    ``input_shape`` is one example's shape: ``(L,)`` for a 1-D signal (MNIST-1D: ``(40,)``),
    ``(H, W)`` for a grayscale image (digits: ``(8, 8)``), ``(C, H, W)`` for a colour image
    (channels first). ``activation`` is a zero-argument callable returning a fresh activation
    module. Returns a ``torch.nn.Module`` mapping a batch ``[B, *input_shape]`` to logits
    ``[B, num_classes]``. That is all an architecture needs: a plain PyTorch model trains in any
    study that uses none of the features below. It may also expose two optional capabilities,
    which ``dlbench plugins check`` reports as supported or not supported (never a failure):

    * ``dlbench.Slot`` modules where regularizers insert themselves: ``Slot("input")``
      before the first layer, ``Slot("norm", features, spatial_dims)`` between each hidden
      layer's linear map or convolution and its activation, ``Slot("hidden", features,
      spatial_dims)`` after it (see ``dlbench.Slot`` in the API reference). Needed by dropout and its variants
      (input or hidden slots) and by batch, layer and group normalization (norm slots);
    * ``hidden_blocks``: any sequence of modules (a list, a tuple, an ``nn.ModuleList``, an
      ``nn.Sequential``), each mapping one hidden representation to the next (the first takes the
      input batch as the model receives it, ``[B, *input_shape]``; a representation may be
      shaped: ``[B, C, L]``, ``[B, T, F]``). Needed by layer-wise initializers
      (``greedy_autoencoder``, ``greedy_rbm``) and ``dropconnect``.

    A study that uses such a component with an architecture lacking what it needs is refused
    before anything trains (``dlbench run`` and ``--dry-run``), naming the component's key path,
    the capability and the architecture.

    **Input shapes.** Decorate the factory with ``@dlbench.accepts(ranks=...)`` to declare the
    ranks of ``input_shape`` it reads (1: ``(L,)``, 2: ``(H, W)``, 3: ``(C, H, W)``); without it
    every shape is accepted (an MLP flattens what it gets). A study pairing it with a dataset of
    another rank is an error before training (``dlbench run`` and ``--dry-run``), naming the
    architecture's key path, the dataset, its shape and the architectures that accept it. An
    option that cannot work for the shape (more pooling stages than the input has room for) is
    best a ``ValueError`` raised by the factory, saying what would fit: the preflight reports it
    at the architecture's key path. Example::

        from dlbench import accepts, hookimpl, stackable

        @stackable
        @accepts(ranks=(1,))                 # 1-D signals only
        def conv1d(input_shape, num_classes, activation, *, channels: int = 16):
            '''A one-layer 1-D CNN.'''
            (length,) = input_shape
            return nn.Sequential(nn.Unflatten(1, (1, length)), nn.Conv1d(1, channels, 5, padding=2),
                                 activation(), nn.Flatten(), nn.Linear(channels * length, num_classes))

        @hookimpl
        def dlbench_register_architectures(register):
            register("conv1d", conv1d)
    """


@hookspec
def dlbench_register_activations(register) -> None:
    """Register activations. Factory: ``f(*, **options) -> torch.nn.Module``.

    Example: ``register("leaky_relu", leaky_relu)`` with
    ``def leaky_relu(*, negative_slope: float = 0.01)``.
    """


@hookspec
def dlbench_register_initializers(register) -> None:
    """Register initializers. Factory: ``f(model, data, *, **options) -> None``.

    Initializes ``model`` in place. ``data`` is the trial's ``dlbench.DeviceData`` (train
    split on the device), so data-dependent schemes (greedy layer-wise pretraining, LSUV) can use
    it. The global RNGs are already seeded for the trial.
    """


@hookspec
def dlbench_register_optimizers(register) -> None:
    """Register optimizers. Factory: ``f(params, *, **options) -> torch.optim.Optimizer``."""


@hookspec
def dlbench_register_schedules(register) -> None:
    """Register learning-rate schedules. Factory:
    ``f(optimizer, total_steps, *, **options) -> torch.optim.lr_scheduler.LRScheduler``.

    The scheduler is stepped once per optimizer step; ``total_steps`` is epochs x batches. The
    loop reads the rate from the optimizer's parameter groups and saves the scheduler's
    ``state_dict`` in each checkpoint (``load_state_dict`` on resume).

    **Epoch ends.** A schedule that follows the training (decay on a validation plateau) gives
    its scheduler an ``epoch_end(epoch, metrics)`` method: the loop calls it after evaluating each
    training epoch (``epoch`` from 1; ``metrics`` as ``dlbench_epoch_end`` gets them:
    ``val_loss``, ``train_accuracy``, ...; ``val_*`` only with ``val_fraction`` > 0), before the
    checkpoint, and a rate it sets in the parameter groups applies from the next step on (and is
    the epoch's recorded ``lr``). Keep everything it decides from in its ``state_dict``, so a
    resumed trial goes on as if never stopped. Such a schedule does not stack (leave it
    undeclared). Example::

        class Halving(torch.optim.lr_scheduler.LRScheduler):
            '''Halve the rate whenever the validation loss goes up.'''
            def __init__(self, optimizer):
                self.scale, self.last = 1.0, math.inf   # in state_dict (LRScheduler saves __dict__)
                super().__init__(optimizer)
            def get_lr(self):
                return [base * self.scale for base in self.base_lrs]
            def epoch_end(self, epoch, metrics):
                self.scale *= 0.5 if metrics["val_loss"] > self.last else 1.0
                self.last = metrics["val_loss"]
                for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
                    group["lr"] = lr

    **Warm-up** is not the schedule's business: the core setting ``warmup_fraction`` (baseline
    key) multiplies any schedule's rate by a linear ramp over the first steps (Goyal et al. 2017).
    """


@hookspec
def dlbench_register_regularizers(register) -> None:
    """Register regularizers. Factory: ``f(*, **options) -> dlbench.Regularizer``.

    A regularizer overrides the points of training it acts on: the model (``wrap_model``), the
    batch (``transform_batch``), the loss (``penalty``), the gradients (``before_step``), the
    parameters after a step (``after_step``) or the stopping decision (``should_stop``).
    """


@hookspec
def dlbench_register_preprocessing(register) -> None:
    """Register preprocessing steps. Factory: ``f(*, **options) -> dlbench.Preprocessor``.

    A study file lists steps in order (``preprocessing = ["standardize"]``). Each step is fitted
    once per dataset on the training split (after the validation split is carved out: never on
    validation or test examples), on the device, then applied to every split:

    * ``fit(x)``: ``x`` is the training inputs, ``[N, *input_shape]`` float32 on the device;
    * ``transform(x) -> x``: a batch ``[M, *input_shape]`` to ``[M, *output_shape]``, the same
      function for every split (a step may change the shape: the architecture sees the new one);
    * ``describe() -> str``: what was fitted, in a few words (``pca: 12 of 40 components, 95.1%
      of variance``), recorded with every trial (the ``dlbench.preprocessing`` tag).

    Example::

        from dlbench import Preprocessor

        class Center(Preprocessor):
            def fit(self, x):
                self.mean = x.mean(0)
            def transform(self, x):
                return x - self.mean

        register("center", Center)   # class Center(Preprocessor): def __init__(self, *, ...)
    """


@hookspec
def dlbench_register_losses(register) -> None:
    """Register losses (the training objective). Factory: ``f(num_classes, *, **options) -> loss``.

    ``num_classes`` is the task's class count. The returned ``loss(logits, y)`` maps logits
    ``[B, C]`` and integer labels ``[B]`` to the per-example losses ``[B]`` (no reduction): the
    loop takes their mean for a training step and their sum for the reported ``<split>_loss``
    (train, validation, test), and a stack computes every member's at once. ``loss`` may also have
    ``mean(logits, y)`` and ``sum(logits, y)`` methods, used for those two reductions instead (the
    built-in reduces inside torch's kernel, as the loop did before losses were plugins). A study file sets one
    with ``loss = "cross_entropy"`` (the default, left out of the resolved config) or
    ``loss = { name = "cross_entropy", label_smoothing = 0.1 }``. Decorate the factory with
    ``@dlbench.stackable`` when ``loss`` is tensor work alone (no ``.item()``, no data-dependent
    Python branch): trials using it may then train stacked, and a CUDA graph may replay their
    steps. Example::

        import torch.nn.functional as F
        from dlbench import stackable

        @stackable
        def squared_hinge(num_classes, *, margin: float = 1.0):
            '''Multi-class squared hinge loss (Crammer & Singer 2001).'''
            def loss(logits, y):
                true = logits.gather(1, y[:, None])
                gaps = F.relu(margin + logits - true).scatter(1, y[:, None], 0.0)
                return gaps.pow(2).sum(1)
            return loss

        register("squared_hinge", squared_hinge)
    """


# -- lifecycle ----------------------------------------------------------------------------------


@hookspec
def dlbench_trial_start(trial: Trial, model: Any, info: TrialInfo) -> None:
    """A trial is about to train. ``info`` is a ``dlbench.TrialInfo``: read its fields as
    attributes (``info.num_params``) or as the keys of the dict it used to be (``info["device"]``,
    ``info.get("stack")``; ``info | {"environment": ...}`` is a copy with that field replaced).
    It pickles. Its fields:

    * ``device``: the torch device the trial trains on (``"cpu"``, ``"cuda:0"``);
    * ``dataset_hash``: the SHA-256 of the dataset's arrays; ``dataset``: its registered name;
      ``dataset_source``: where its arrays came from (a prepared folder, or ``"generated"``);
    * ``num_classes``; ``num_params``: the model's parameters (regularizers applied);
    * ``preprocessing``: what each preprocessing step fitted, in order (empty without any);
    * ``resumed_from_epoch``: the epoch of the checkpoint the trial resumes after (None for a
      fresh start);
    * ``stack``: for a member of a stack, a ``StackInfo`` (``id``, ``size``, ``member``: its
      position, ``members``: every member's config, ``cuda_graphs``: whether its steps replay
      from CUDA graphs, ``stacked_init``: whether members sharing an initializer initialized at
      once); None, and no key, for a trial trained alone;
    * ``environment``: where the trial trains (device, threads, host, as ``dlbench.*`` tags),
      set by a worker process for the observers of the dlbench process; None, and no key, in the
      process that trains it.

    With worker processes (``dlbench run --jobs N``), observers run in the worker that trains the
    trial, beside the model; the dlbench process itself runs only the MLflow tracker, the
    published progress and the terminal's view, fed by the workers' events."""


@hookspec
def dlbench_epoch_end(trial: Trial, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch finished; ``metrics`` has train/val/test loss and accuracy and the lr.

    Epoch 0 is the evaluation of the initialized model before any training step.
    """


@hookspec
def dlbench_after_backward(trial: Trial, model: Any, optimizer: Any, step: int, data: Any) -> None:
    """The gradients of optimizer step ``step`` (1-based, counted over the whole trial) are in
    the parameters' ``.grad``; the optimizer has not stepped yet (nor gradient clipping run).

    Called on every training batch, so an implementation returns at once on the steps it skips
    and must not consume random numbers or touch the gradients (training must not change
    because someone watched). For a trial trained in a stack it is called only at the
    diagnostics steps (step 1 and every ``diagnostics_every``), with the trial's own model
    holding its current weights and gradients copied out of the stack. ``data`` is the trial's ``dlbench.DeviceData``, for probe
    batches. The built-in ``dlbench.diagnostics.Diagnostics`` records per-layer statistics here.
    """


@hookspec
def dlbench_diagnostics(trial: Trial, step: int, values: dict[str, float]) -> None:
    """Diagnostic metrics measured at optimizer step ``step`` (``diag per step/grad_norm.layer0``, ...).

    The MLflow tracker logs them with ``step`` as the metric step, beside the per-epoch metrics
    (whose step is the epoch). Any observer may emit through this hook.
    """


@hookspec
def dlbench_checkpoint(trial: Trial, epoch: int) -> None:
    """The loop is about to save the trial's checkpoint after ``epoch``: make everything observed
    so far durable (the MLflow tracker flushes its buffer): a trial resumed from this checkpoint
    does not run its earlier steps again, so what they emitted would be lost."""


@hookspec
def dlbench_trial_end(trial: Trial, result: TrialResult) -> None:
    """A trial finished, diverged or failed (``result.status``), with its final metrics."""
