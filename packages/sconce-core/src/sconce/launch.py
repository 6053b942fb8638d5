"""``sconce compress --nproc N``: the same command run as N processes by torch's own launcher.

The command is handed to ``python -m torch.distributed.run`` (torchrun) unchanged except for
the launch options, so each process runs an ordinary ``sconce compress`` under torchrun:
fine-tuning and QAT with DistributedDataParallel (gloo on CPU, nccl on CUDA, one GPU per
process), rank 0 writing the output folder. One machine uses torchrun's ``--standalone``
rendezvous (a free port on localhost); several machines pass ``--nnodes``, ``--rdzv-endpoint``
and either ``--node-rank`` (torchrun's default static rendezvous) or ``--rdzv-backend c10d``
through to it, the same command running on every machine.

Example:
    >>> Launch(nproc=2).torchrun_options()
    ['--nproc-per-node=2', '--standalone']
    >>> Launch(nproc=1).wanted
    False
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from sconce.errors import ConfigError

__all__ = ["Launch", "LaunchError", "run_torchrun"]

logger = logging.getLogger(__name__)

TORCHRUN = ("-m", "torch.distributed.run")
STATIC = "static"  # torchrun's default rendezvous backend: machines numbered by --node-rank


class LaunchError(ConfigError):
    """The launch options do not make sense together (one line saying how to fix them)."""


@dataclass(frozen=True)
class Launch:
    """How many processes to run a command as, on how many machines.

    Attributes:
        nproc: processes on this machine (None or 1: run in this process).
        nnodes: machines taking part (each runs the same command).
        node_rank: this machine's number (0 on the one at ``rdzv_endpoint``), for the static
            rendezvous.
        rdzv_endpoint: ``HOST:PORT`` every machine meets at.
        rdzv_backend: torchrun's rendezvous backend (``static`` when None; ``c10d`` numbers the
            machines itself).
        rdzv_id: the job's id, the same on every machine (c10d).

    Example:
        >>> Launch(nproc=4, nnodes=2, node_rank=1, rdzv_endpoint="head:29400").torchrun_options()
        ['--nproc-per-node=4', '--nnodes=2', '--rdzv-endpoint=head:29400', '--node-rank=1']
    """

    nproc: int | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_backend: str | None = None
    rdzv_id: str | None = None

    @property
    def wanted(self) -> bool:
        """True when the command is to run under torchrun (more than one process in all)."""
        return (self.nproc or 1) > 1 or (self.nnodes or 1) > 1

    @property
    def several_machines(self) -> bool:
        """True when more than one machine takes part."""
        return (self.nnodes or 1) > 1

    def check(self, device: str) -> None:
        """Refuse options that cannot work, before anything starts.

        Args:
            device: the command's ``--device``; with CUDA (or ``auto`` on a machine with
                CUDA) every process needs a GPU of its own.

        Raises:
            LaunchError: one line saying what is wrong and how to fix it.

        Example:
            >>> Launch(nproc=0).check("cpu")
            Traceback (most recent call last):
            ...
            sconce.launch.LaunchError: --nproc must be 1 or more (processes on this machine), got 0
        """
        if self.nproc is not None and self.nproc < 1:
            raise LaunchError(f"--nproc must be 1 or more (processes on this machine), "
                              f"got {self.nproc}")
        if self.nnodes is not None and self.nnodes < 1:
            raise LaunchError(f"--nnodes must be 1 or more (machines), got {self.nnodes}")
        self._check_machines()
        if self.wanted:
            self._check_not_launched()
            self._check_gpus(device)

    def _check_machines(self) -> None:
        given = [name for name, value in (
            ("--node-rank", self.node_rank), ("--rdzv-endpoint", self.rdzv_endpoint),
            ("--rdzv-backend", self.rdzv_backend), ("--rdzv-id", self.rdzv_id))
            if value is not None]
        if not self.several_machines:
            if given:
                raise LaunchError(f"{given[0]} is for several machines; give --nnodes 2 or "
                                  "more too, or leave it out")
            return
        if not self.rdzv_endpoint:
            raise LaunchError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, the "
                              "address of one of the machines, the same on every machine")
        static = self.rdzv_backend in (None, STATIC)
        if static and self.node_rank is None:
            raise LaunchError(f"--nnodes {self.nnodes} needs --node-rank (0 on the machine at "
                              "--rdzv-endpoint, 1, 2, ... on the others), or --rdzv-backend c10d")
        if self.node_rank is not None and not 0 <= self.node_rank < (self.nnodes or 1):
            raise LaunchError(f"--node-rank must be 0 to {(self.nnodes or 1) - 1} with "
                              f"--nnodes {self.nnodes}, got {self.node_rank}")

    def _check_not_launched(self) -> None:
        if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
            raise LaunchError("this command already runs under torchrun (as rank "
                              f"{os.environ.get('RANK', '?')}); drop --nproc and --nnodes")

    def _check_gpus(self, device: str) -> None:
        if not (device == "auto" or device.startswith("cuda")):
            return
        import torch

        if device == "auto" and not torch.cuda.is_available():
            return  # auto means the CPU here: gloo, any number of processes
        count = torch.cuda.device_count()
        if (self.nproc or 1) > count:
            way_out = f"--nproc {count} or fewer, or --device cpu" if count else "--device cpu"
            raise LaunchError(f"--nproc {self.nproc or 1} on CUDA needs a GPU per process and "
                              f"torch sees {count} here; use {way_out}")

    def torchrun_options(self) -> list[str]:
        """torchrun's options for this launch (before the command)."""
        options = [f"--nproc-per-node={self.nproc or 1}"]
        if not self.several_machines:
            return [*options, "--standalone"]  # a free port on localhost: runs never collide
        options += [f"--nnodes={self.nnodes}", f"--rdzv-endpoint={self.rdzv_endpoint}"]
        for name, value in (("--node-rank", self.node_rank), ("--rdzv-backend", self.rdzv_backend),
                            ("--rdzv-id", self.rdzv_id)):
            if value is not None:
                options.append(f"{name}={value}")
        return options


def run_torchrun(launch: Launch, module: str, arguments: Sequence[str], *,
                 env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> int:
    """Run ``python -m module *arguments`` as ``launch`` says, under torchrun; wait for it.

    Args:
        launch: the processes and machines.
        module: the module each process runs (``sconce.cli``).
        arguments: its arguments (without the launch options, so it does not launch again).
        env: added to this process's environment for torchrun and every process it starts.
        pass_fds: file descriptors torchrun keeps open (the output folder's lock).

    Returns:
        torchrun's exit status (non-zero when any process failed). SIGINT and SIGTERM sent
        to this process are passed on to torchrun, which stops its processes.

    Example:
        >>> run_torchrun(Launch(nproc=2), "sconce.cli", ["compress"])  # doctest: +SKIP
        0
    """
    argv = [sys.executable, *TORCHRUN, *launch.torchrun_options(), "-m", module, *arguments]
    logger.info("launching %d process(es)%s with torchrun: sconce %s", launch.nproc or 1,
                f" on each of {launch.nnodes} machines" if launch.several_machines else "",
                " ".join(arguments))
    # torchrun gets a process group of its own, so a Ctrl-C at the terminal reaches it once,
    # forwarded from here, and it stops its processes itself
    with subprocess.Popen(argv, env={**os.environ, **(env or {})}, pass_fds=tuple(pass_fds),
                          process_group=0) as process, _forwarding(process):
        return process.wait()


@contextmanager
def _forwarding(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Pass SIGINT and SIGTERM on to ``process`` while it runs (in the main thread only,
    where Python lets a handler be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: FrameType | None) -> None:
        process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
