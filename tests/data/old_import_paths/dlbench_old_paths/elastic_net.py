"""docs/plugins.md's example plugin elastic_net.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

from dlbench import Range, hookimpl
from dlbench.regularizer import Regularizer, StackedRegularizer, stacked_weights, weights

Weight = Annotated[float, Range(ge=0)]


class ElasticNet(Regularizer):
    """Elastic net penalty (Zou & Hastie 2005): l1 * sum|w| + (l2 / 2) * sum w^2 over the weights.

    l1 (>= 0, default 1e-5) and l2 (>= 0, default 1e-4); biases and normalization scales are not
    penalized.
    """

    def __init__(self, *, l1: Weight = 1e-5, l2: Weight = 1e-4):
        self.l1, self.l2 = l1, l2

    def penalty(self, model):
        return sum(self.l1 * w.abs().sum() + 0.5 * self.l2 * w.pow(2).sum() for w in weights(model))

    @classmethod
    def stacked(cls, members):
        return StackedElasticNet(members)


class StackedElasticNet(StackedRegularizer):
    def penalty(self, params):  # one value per member: [N]
        ws = stacked_weights(params)
        l1, l2 = self.values("l1", ws[0]), self.values("l2", ws[0])
        return sum(l1 * w.abs().flatten(1).sum(1) + 0.5 * l2 * w.pow(2).flatten(1).sum(1) for w in ws)


@hookimpl
def dlbench_register_regularizers(register):
    register("elastic_net", ElasticNet)
