"""Communicators for data-parallel training: the one module that knows MPI and NCCL exist.

One process per device. Every process holds the whole model; each takes its slice of every global
batch, and after the backward pass their gradients are summed with one allreduce over the model's
flat gradient buffer (after ChainerMN's design). The trainer gets a communicator; layers never
see it, except batch norm's optional synchronised statistics through a hook.

- `Single`: one process, every call a no-op.
- `MPIComm` (mpi4py): CPU arrays, and the small host-side agreements every rank must make
  together (metrics, stop requests, divergence), on MPI_COMM_WORLD.
- `NCCLComm`: GPU arrays through NCCL (CuPy's `cupy.cuda.nccl`); the NCCL id is broadcast over
  MPI, which still carries the host-side agreements.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

from nnx.errors import NnxError

MPI_HINT = "pip install 'nnx[mpi]' (mpi4py and MPICH) and start the ranks with mpiexec -n N"


class RanksDisagreeError(NnxError):
    """Found by every rank alike (so rank 0 alone reports it)."""


class Communicator:
    """The calls the trainer makes. Every one is collective: all ranks call it, in the same order."""

    rank = 0
    size = 1
    local_rank = 0  # rank among the processes of this machine (which GPU to use)
    local_size = 1  # processes on this machine (they share its cores)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, x: Any) -> None:
        """x <- sum over ranks of x, in place (a backend array: NumPy or CuPy)."""

    def allreduce_host(self, values: Any, op: str = "sum") -> np.ndarray:
        """Sum, min or max over ranks of a small host array; returns a new array."""
        return np.array(values, dtype=np.float64, copy=True)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def abort(self, code: int) -> None:
        """End every rank at once (an error on one must not leave the others waiting)."""
        sys.exit(code)


class Single(Communicator):
    """One process: nothing to communicate."""


class MPIComm(Communicator):
    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise NnxError(f"--distributed needs mpi4py and an MPI library ({exc}): {MPI_HINT}") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def allreduce_sum(self, x: Any) -> None:
        if not isinstance(x, np.ndarray):
            raise NnxError("MPI sums host (NumPy) arrays; GPU arrays go through NCCL (--device gpu)")
        self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)

    def allreduce_host(self, values: Any, op: str = "sum") -> np.ndarray:
        buffer = np.array(values, dtype=np.float64, copy=True)
        mpi_op = {"sum": self.MPI.SUM, "min": self.MPI.MIN, "max": self.MPI.MAX}[op]
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=mpi_op)
        return buffer

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return while the launcher ends the job: never go on


class NCCLComm(MPIComm):
    """GPU gradients through NCCL on the current CUDA stream; host agreements through MPI.

    The NCCL communicator is built lazily, after each rank has chosen its GPU (as ChainerMN's
    PureNcclCommunicator does): rank 0 makes the unique id and MPI broadcasts it."""

    def __init__(self) -> None:
        super().__init__()
        self._nccl_comm: Any = None

    def _nccl(self) -> Any:
        if self._nccl_comm is None:
            from cupy.cuda import nccl

            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            self._nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl_comm

    def allreduce_sum(self, x: Any) -> None:
        if isinstance(x, np.ndarray):
            super().allreduce_sum(x)
            return
        import cupy
        from cupy.cuda import nccl

        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        stream = cupy.cuda.get_current_stream().ptr
        self._nccl().allReduce(x.data.ptr, x.data.ptr, x.size, types[x.dtype], nccl.NCCL_SUM, stream)


def mpi_world_size() -> int:
    """How many processes mpiexec/mpirun started with this one (MPICH and Intel MPI's Hydra set
    PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE); 1 when not started by one."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def get_communicator(distributed: bool, gpu: bool) -> Communicator:
    """`Single` unless --distributed; then MPI for CPU ranks, NCCL (plus MPI) for GPU ranks."""
    if not distributed:
        return Single()
    return NCCLComm() if gpu else MPIComm()


def config_digest(config: dict[str, Any]) -> str:
    """What every rank must agree on: the config, less where each machine keeps data and runs."""
    agreed = json.loads(json.dumps(config))
    agreed.get("data", {}).pop("dir", None)
    agreed.pop("output", None)
    agreed.pop("device", None)  # gpu:0, gpu:1, ...: each rank its own
    return hashlib.sha256(json.dumps(agreed, sort_keys=True).encode()).hexdigest()


def check_same_config(comm: Communicator, config: dict[str, Any]) -> None:
    """Ranks started with different configs would train different things in lockstep: refuse."""
    digests = comm.allgather_object(config_digest(config))
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    if differing:
        configs = comm.allgather_object(config)
        keys = sorted(_differences(configs[0], configs[differing[0]]))
        raise RanksDisagreeError(
            f"ranks disagree on the config: rank {differing[0]} differs from rank 0 in {', '.join(keys)}; "
            "start every rank with the same config and flags"
        )


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if name in ("data.dir", "output", "device"):
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differences(x, y, f"{name}.")
        elif x != y:
            keys.append(name)
    return keys
