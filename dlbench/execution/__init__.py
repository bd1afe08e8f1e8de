"""Execution: where the units of work of a study run train.

One declared interface, :class:`Pool` (``pool.py``), and its siblings: :class:`InlinePool`
(this process, ``inline.py``), :class:`WorkerPool` (worker processes over this machine's cores
and GPUs, ``local.py``) and ``RayPool`` (Ray tasks on a cluster, ``ray_pool.py``: imported only
with ``--executor ray``, Ray being optional). Around them: the queue the units are handed out
from (``queue.py``), one unit's training in whatever process runs it (``unit.py``), the events
that bring a trial's lifecycle back to this process (``events.py``), a worker's world
(``world.py``) and the devices (``devices.py``).
"""

from dlbench.execution.devices import cluster_device, cpu_cores, default_jobs, resolve_device, resolve_devices
from dlbench.execution.inline import InlinePool
from dlbench.execution.local import WorkerPool, start_method, start_workers
from dlbench.execution.pool import Pool
from dlbench.execution.queue import WorkQueue, hand_out_order
from dlbench.execution.unit import checkpoint_path, execute

__all__ = ["InlinePool", "Pool", "WorkQueue", "WorkerPool", "checkpoint_path", "cluster_device", "cpu_cores",
           "default_jobs", "execute", "hand_out_order", "resolve_device", "resolve_devices", "start_method",
           "start_workers"]
