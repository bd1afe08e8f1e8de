"""Which input shapes an architecture accepts, and the check of a study's architecture against
its dataset before anything trains.

An example's shape is one of (see the datasets): ``(L,)`` a 1-D signal (MNIST-1D: ``(40,)``),
``(H, W)`` a grayscale image (digits: ``(8, 8)``), ``(C, H, W)`` a colour image, channels first.
An architecture factory declares the ranks it reads with ``@accepts(ranks=(1,))``; one that
declares nothing (an MLP flattens whatever it gets) accepts every shape.
"""

from __future__ import annotations

ACCEPTS = "dlbench_accepts"  # attribute a factory carries: the input ranks it accepts
KNOWN_RANKS = {1: "(L,): 1-D signals", 2: "(H, W): grayscale images", 3: "(C, H, W): images, channels first"}


def accepts(*, ranks: tuple[int, ...]):
    """Declare the input ranks an architecture factory accepts (1: ``(L,)``, 2: ``(H, W)``,
    3: ``(C, H, W)``); a dataset of another rank is a study-file error before training."""
    ranks = tuple(ranks)
    if not ranks or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in ranks):
        raise TypeError(f"@accepts(ranks={ranks!r}): give the accepted input ranks as integers >= 1, e.g. ranks=(1, 2)")

    def mark(factory):
        setattr(factory, ACCEPTS, ranks)
        return factory

    return mark


def accepted_ranks(factory) -> tuple[int, ...] | None:
    """The ranks ``factory`` declared with :func:`accepts`; None: every shape."""
    return getattr(factory, ACCEPTS, None)


class InputShapeError(ValueError):
    """A study pairs an architecture with a dataset whose examples it cannot read."""

    def __init__(self, architecture: str, ranks: tuple[int, ...], dataset: str, shape: tuple[int, ...],
                 accepting: list[str]):  # dataset: what gives the examples ("dataset 'digits'")
        self.architecture, self.ranks, self.dataset, self.shape = architecture, ranks, dataset, shape
        self.accepting = accepting
        reads = "; ".join(KNOWN_RANKS.get(r, f"rank {r}") for r in ranks)
        others = ", ".join(accepting) or "none registered"
        super().__init__(f"architecture {architecture!r} reads inputs of rank {' or '.join(map(str, ranks))} "
                         f"({reads}), but {dataset} gives examples of shape {tuple(shape)} "
                         f"(rank {len(shape)}); architectures that accept rank {len(shape)}: {others}")


def check_input_shape(registry, architecture: str, dataset: str, shape: tuple[int, ...]) -> None:
    """Raise :class:`InputShapeError` when ``architecture`` does not accept examples of ``shape``
    (``dataset`` says where they come from: "dataset 'digits'")."""
    ranks = accepted_ranks(registry.get("architecture", architecture).factory)
    if ranks is None or len(shape) in ranks:
        return
    accepting = [name for name in registry.names("architecture")
                 if len(shape) in (accepted_ranks(registry.get("architecture", name).factory) or (len(shape),))]
    raise InputShapeError(architecture, ranks, dataset, shape, accepting)
