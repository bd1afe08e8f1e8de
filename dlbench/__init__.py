"""dlbench: deep-learning ablation studies you can trust.

Plugins import ``hookimpl`` (and ``Range``, ``Length`` for their options' domains) from here::

    from dlbench import hookimpl

    @hookimpl
    def dlbench_register_activations(register):
        register("swish", swish)
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("dlbench")

__all__ = ["hookimpl", "stackable", "accepts", "Range", "Length", "__version__"]


def __getattr__(name):  # ``from dlbench import stackable`` without importing torch at ``import dlbench``
    if name == "stackable":
        from dlbench.stacking import stackable

        return stackable
    if name == "accepts":  # the input ranks an architecture reads: ``@accepts(ranks=(1,))``
        from dlbench.shapes import accepts

        return accepts
    if name in ("Range", "Length"):  # option domains: ``lr: Annotated[float, Range(gt=0)]``
        from dlbench import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'dlbench' has no attribute {name!r}")
