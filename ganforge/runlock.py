"""One run per run directory: an OS lock that the process holding it releases by exiting,
however it exits (a killed run leaves nothing to clean up), and what a run changes in its
directory before it trains (:class:`RunDirectory`).

The lock is ``.<name>.lock`` beside the run directory, not inside it: ``train.resume =
"never"`` renames the directory aside, and the lock must stay with the name ``run.out_dir``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path

from ganforge.checkpoint import (
    Checkpoint,
    list_checkpoints,
    newest_checkpoint,
    set_aside,
    set_aside_newer,
    warn,
)
from ganforge.distributed import main_decides
from ganforge.errors import GanforgeError
from ganforge.runfiles import cut_jsonl, write_text


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``run_dir``'s lock file.

    Exclusive between processes; within one process, trainers built on the same directory
    share it (a notebook or a test building a second one before the first is gone), and the
    lock is dropped when the last of them releases it."""

    #: This process's locks: the lock file's path -> [descriptor, holders].
    _held: dict[Path, list[int]] = {}

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir).absolute()
        self.path = run_dir.with_name(f".{run_dir.name}.lock")
        self.run_dir, self._holding = run_dir, False

    def acquire(self) -> None:
        """Take the lock, or raise one clear error without touching anything else."""
        if self._holding:
            return
        shared = self._held.get(self.path)
        if shared is not None:
            shared[1] += 1
            self._holding = True
            return
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
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise GanforgeError(
                    f"another run is using {self.run_dir} (it holds {self.path}): a run started "
                    "twice, a job submitted again, or workers whose launcher was killed? Wait "
                    "for it to end, stop it, or choose another run.out_dir"
                ) from None
            # A file system without locks (NFS without lockd, Lustre without -o flock): the
            # run goes on, unguarded, rather than not at all.
            print(
                f"ganforge: warning: the run directory's lock {self.path} cannot be taken "
                f"({err.strerror or err}): a second run started on {self.run_dir} will not "
                "be refused; do not start one",
                file=sys.stderr,
                flush=True,
            )
        self._held[self.path] = [fd, 1]
        self._holding = True

    def release(self, _close=os.close) -> None:
        # os.close bound here: a lock released by __del__ at interpreter exit may find the
        # os module's globals already cleared.
        if not self._holding:
            return
        self._holding = False
        shared = self._held[self.path]
        shared[1] -= 1
        if not shared[1]:
            del self._held[self.path]
            _close(shared[0])  # closing the descriptor drops the lock

    def __del__(self):
        self.release()


class RunDirectory:
    """A run's directory (``run.out_dir``), owned for the whole launch: :meth:`lock_for` takes
    it before anything in it is read; building a run changes no file in it; :meth:`take`
    does."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.locked = False  # on every process: whether the launch holds the directory

    def lock_for(self, accelerator) -> None:
        """*Collective.* Lock the directory before anything reads it: the main process holds
        the lock for the whole launch, and every process stops with one message when another
        run holds it (a run started twice, a job submitted again, orphaned workers)."""
        main_decides(accelerator, self.lock.acquire, f"the main process could not lock {self.path}")
        self.locked = True

    def take(self, accelerator, resume: str, resumed: Checkpoint | None) -> str:
        """*Collective.* With ``train.resume = "never"`` move an earlier run aside; a resumed
        run sets aside the checkpoints past the one it continues. Returns what to add to the
        start message."""
        note = ""
        # Every process is past its own look at the folder before the main one renames anything.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if resume == "never" and list_checkpoints(self.path):
                note = f"; the earlier run was moved to {set_aside(self.path, 'before')}"
            if resumed is not None:
                for moved in set_aside_newer(resumed, self.path):
                    warn(f"resuming from step {resumed.step}: set aside {moved}")
        accelerator.wait_for_everyone()
        return note

    def prepare(self, step: int, recipe_toml: str) -> None:
        """The main process's files before the first step: ``samples/``, the metrics log cut
        at ``step`` (no step is logged twice; read first, so a damaged log stops the run before
        anything is written) and the resolved ``recipe.toml``."""
        try:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GanforgeError(
                f"cannot create the run directory {self.path} (run.out_dir): {err.strerror or err}"
            ) from None
        cut_jsonl(self.path / "metrics.jsonl", step)
        write_text(self.path / "recipe.toml", recipe_toml)

    def write_failure(self, err: OSError) -> str:
        """What a failed write during training says: where, why, and what is intact."""
        return (
            f"could not write in the run directory {self.path}: {err}; "
            f"{newest_checkpoint(self.path, 'is intact')}. Free space (or fix the folder) "
            "and run the same command again to continue"
        )

    def release(self) -> None:
        """Free the directory again, however the run ended."""
        self.lock.release()
        self.locked = False
