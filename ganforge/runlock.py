"""One run per run directory: an OS lock that the process holding it releases by exiting,
however it exits (a killed run leaves nothing to clean up).

The lock is ``.<name>.lock`` beside the run directory, not inside it: ``train.resume =
"never"`` renames the directory aside, and the lock must stay with the name ``run.out_dir``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ganforge.errors import GanforgeError


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir``'s lock file."""

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir).absolute()
        self.path = run_dir.with_name(f".{run_dir.name}.lock")
        self.run_dir, self._fd = run_dir, None

    def acquire(self) -> None:
        """Take the lock, or raise one clear error without touching anything else."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise GanforgeError(
                f"cannot create the run directory {self.run_dir} (run.out_dir): "
                f"{err.strerror or err}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise GanforgeError(
                f"another run is using {self.run_dir} (it holds {self.path}): a run started "
                "twice, or a job submitted again? Wait for it to end, stop it, or choose "
                "another run.out_dir"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __del__(self):
        self.release()
