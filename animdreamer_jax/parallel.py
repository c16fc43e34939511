"""Many devices: the train steps' rays split over a device mesh, one host or many.

Data parallelism with JAX's own machinery. A `Layout` holds a one-axis
`jax.sharding.Mesh` ("data") over the devices the `parallel` section names.
Every train step is jitted with the state, the stage's data and the scalars
replicated on that mesh; inside, a loss term marks its batch with
`Layout.split` (a sharding constraint on the batch axis: the reconstruction
batch's frame rows, each CSD view's pixels, the diffusion prior's views x CFG
batch), and XLA's SPMD partitioner runs each device's share and all-reduces
the gradient. The computation is the same global one as on one device, so the
parameters agree within float rounding; with one device the step is jitted
exactly as before.

Several hosts: `initialize_distributed` starts `jax.distributed` when the
environment says so (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID, or a cluster JAX detects: SLURM, Open MPI), before any
computation. Every process then holds the whole video and the replicated state
(`place`); `to_host` reads a replicated array from this process's own copy;
only process 0 (`is_primary`) writes logs and outputs, and orbax coordinates
the checkpoints (the run folder must be on a file system every host sees).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from animdreamer_jax.errors import UserError

DATA_AXIS = "data"
# Our launch convention (any host): all three set -> jax.distributed.initialize with them.
DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class ParallelSettings:
  """`parallel`: the devices one train step is split over (data parallelism)."""
  # Devices the batch is split over, all hosts together (the first N of jax.devices());
  # 0: every device. Each must divide the batch: config.data.pairs_per_batch x 2 rows,
  # every CSD view's pixels (a patch's, with csd.patches) and the prior's 2 x 4 images.
  devices: int = 0

  def __post_init__(self):
    if self.devices < 0:
      raise UserError("config.parallel.devices: must be >= 0 (0: every device)")


def _cluster_detected(environ: Mapping[str, str]) -> bool:
  """A multi-process job of a launcher jax.distributed detects on its own."""
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    try:
      if int(environ.get(name, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def initialize_distributed(environ: Mapping[str, str] = os.environ) -> bool:
  """Starts jax.distributed if the environment describes a multi-process job; True if it did.

  Must run before anything touches a JAX device. On CPU, the processes' collectives
  go through gloo.

  Raises:
    UserError: only some of DISTRIBUTED_VARIABLES set, or not integers.
  """
  given = [name for name in DISTRIBUTED_VARIABLES if environ.get(name)]
  if not given and not _cluster_detected(environ):
    return False
  if jax.distributed.is_initialized():
    return True
  if given and len(given) != len(DISTRIBUTED_VARIABLES):
    missing = [name for name in DISTRIBUTED_VARIABLES if name not in given]
    raise UserError(f"{', '.join(given)} set but not {', '.join(missing)}: a multi-host run "
                    "needs all three")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if given:
    try:
      count, index = int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"])
    except ValueError as error:
      raise UserError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID: not integers ({error})") from None
    jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"], num_processes=count,
                               process_id=index)
  else:
    jax.distributed.initialize()
  return True


def sync(name: str) -> None:
  """With several processes: waits until every process reaches the same `name` (so decisions
  read from the shared run folder are the same in all of them); no-op otherwise."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """True in the process that writes files (process 0; the only one on one host)."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
  """Where a train step runs: `mesh` None = one device, jitted as a plain jax.jit."""
  mesh: Optional[Mesh] = None

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.devices.size

  @property
  def replicated(self) -> Optional[NamedSharding]:
    return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

  def split(self, tree: Any, axis: int = 0) -> Any:
    """Inside a jitted step: every leaf of `tree` with an `axis` split over the devices
    along it (a sharding constraint; the values are unchanged; lower-rank leaves, e.g. a
    scalar shared by the batch, stay replicated)."""
    if self.num_devices == 1:
      return tree
    sharding = NamedSharding(self.mesh, PartitionSpec(*([None] * axis + [DATA_AXIS])))

    def constrain(x):
      if x is None or np.ndim(x) <= axis:
        return x
      return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree_util.tree_map(constrain, tree)

  def gather(self, tree: Any) -> Any:
    """Inside a jitted step: every leaf whole on every device again (e.g. split renders
    before a prior that needs whole images, or a host callback)."""
    if self.num_devices == 1:
      return tree
    return jax.tree_util.tree_map(
        lambda x: jax.lax.with_sharding_constraint(x, self.replicated), tree)

  def check_divisible(self, size: int, what: str) -> None:
    """UserError unless `size` (a batch axis) splits evenly over the devices."""
    if size % self.num_devices:
      raise UserError(f"{what} = {size} does not split over {self.num_devices} devices "
                      f"(config.parallel.devices); make it a multiple of {self.num_devices} or "
                      "use fewer devices")

  def place(self, tree: Any) -> Any:
    """`tree` replicated on the mesh (leaves already there are kept as they are)."""
    if self.mesh is None:
      return tree
    sharding = self.replicated

    def put(x):
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
      return jax.device_put(to_host(x), sharding)

    return jax.tree_util.tree_map(put, tree)


def make_layout(settings: ParallelSettings = ParallelSettings()) -> Layout:
  """The Layout of `settings` over jax.devices() (every host's).

  Raises:
    UserError: more devices asked for than there are.
  """
  available = jax.devices()
  count = settings.devices or len(available)
  if count > len(available):
    raise UserError(f"config.parallel.devices = {count}: only {len(available)} "
                    f"{available[0].platform} device(s) here")
  if count == 1:
    return Layout()
  return Layout(Mesh(np.array(available[:count]), (DATA_AXIS,)))


def local(tree: Any) -> Any:
  """A replicated tree on this process's first device (its own copy, no transfer): host-side
  work between steps (marching cubes, pictures, outputs) runs there once, not on every device."""

  def first_copy(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      return x.addressable_data(0)
    return x

  return jax.tree_util.tree_map(first_copy, tree)


def to_host(tree: Any) -> Any:
  """NumPy copies of a (replicated) tree's arrays, read from this process's own copy."""
  return jax.tree_util.tree_map(np.array, local(tree))

