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

__all__ = ["hookimpl", "__version__"]
