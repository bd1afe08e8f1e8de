"""docs/plugins.md's example plugin min_max.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from dlbench import hookimpl
from dlbench.preprocessing import Preprocessor


class MinMax(Preprocessor):
    """Min-max scaling to [0, 1] per feature: (x - min) / (max - min), fitted on the training split.

    A feature constant on the training split is only shifted. No options.
    """

    def fit(self, x):
        self.low = x.min(0).values
        self.span = (x.max(0).values - self.low).clamp_min(1e-12)

    def transform(self, x):
        return (x - self.low) / self.span

    def describe(self):
        return f"{self.low.numel()} features scaled"


@hookimpl
def dlbench_register_preprocessing(register):
    register("min_max", MinMax)
