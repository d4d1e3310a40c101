"""Every random stream of a run, and the one function that derives its seed.

The promise that sampling, evaluation and export never disturb training rests on each of them
drawing from its own stream. Every stream a run derives from ``run.seed`` is seeded here:

- ``"weights"``: the global stream while the models are built (identical on every process).
- ``"modules"``: the global stream during training (dropout and other module randomness),
  one per process.
- ``"latents"``: the training latents, a ``torch.Generator`` on the device, one per process.
- ``"samples"``: the fixed latent batch of every sample grid.
- ``"evaluation"``: the samples ``[eval]`` scores, one per process.

Where a resume cannot restore a process's saved streams (another number of processes, another
kind of device), ``"modules"`` and ``"latents"`` restart from the seed and the step
(``step``), so the resumed run is still reproducible. Some consumers take ``run.seed`` as it
is and derive within their own code: the data order (``data.ShardedSampler``), k-means
clusters and the evaluation's real split. Standing statistics and the export's samples use
fixed seeds of their own, the same in a run and in ``ganforge export``/``generate``.
"""

from __future__ import annotations

STREAMS = ("weights", "modules", "latents", "samples", "evaluation")

# Odd multipliers keep the streams of different processes, steps and seeds apart.
_LATENTS, _STEP, _EVALUATION = 7919, 104729, 1_000_003


def stream_seed(stream: str, seed: int, rank: int = 0, step: int = 0) -> int:
    """The seed of ``stream`` for process ``rank`` (restarted at ``step`` on a resume that
    cannot restore it; 0 otherwise) of a run with ``run.seed = seed``."""
    restart = step * _STEP
    if stream == "weights":
        return seed
    if stream == "modules":
        return seed + rank + restart
    if stream == "latents":
        return seed * _LATENTS + rank + 1 + restart
    if stream == "samples":
        return seed + 2**31 - 1
    if stream == "evaluation":
        return seed + _EVALUATION * (rank + 1)
    raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
