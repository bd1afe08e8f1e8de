"""dlbench: deep-learning ablation studies you can trust.

Plugins import ``hookimpl`` from here::

    from dlbench import hookimpl

    @hookimpl
    def dlbench_register_activations(register):
        register("swish", swish)
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("dlbench")

__all__ = ["hookimpl", "stackable", "__version__"]


def __getattr__(name):  # ``from dlbench import stackable`` without importing torch at ``import dlbench``
    if name == "stackable":
        from dlbench.stacking import stackable

        return stackable
    raise AttributeError(f"module 'dlbench' has no attribute {name!r}")
