"""What every helper process dlbench starts does first (training workers, figure processes)."""

from __future__ import annotations

import ctypes
import signal


def become_helper() -> None:
    """Ctrl-C is the parent's to handle (it stops its helpers), and the helper dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (even by kill -9), so no helper
    outlives the command that started it. Elsewhere nothing happens."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
