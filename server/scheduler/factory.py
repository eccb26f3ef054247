"""`make_dispatcher`: what the repository calls for each loaded model version."""

from __future__ import annotations

import os

from ..metrics import MetricsSink
from ..repository.config import SchedulingSettings
from .core import SchedulerCore
from .dispatcher import AsyncDispatcher
from .interface import BatchRunner, Clock
from .latency import LatencyModel
from .padding import Padding
from .variants import Variant, VariantChooser


def background_pieces(batch_threads: int, runner: BatchRunner) -> int:
    """How many batch-class pieces run side by side: `batch_threads`, or when it is 0, as
    many as the cores this process may use hold runs of the model (each run uses the
    runner's `threads_per_run` cores, 1 when it does not say)."""
    if batch_threads > 0:
        return batch_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    per_run = getattr(runner, "threads_per_run", 1) or cores
    return max(1, cores // per_run)


def make_dispatcher(
    *,
    model: str,
    version: str,
    runner: BatchRunner,
    settings: SchedulingSettings,
    max_batch_size: int,
    metrics: MetricsSink,
    clock: Clock | None = None,
    variants: list[tuple[str, float, BatchRunner]] | None = None,
    accuracy_budget: float = 0.0,
) -> AsyncDispatcher:
    """A dispatcher for one model version. Call `prepare()` (blocking: profiles L(b))
    in a loader thread, then `await start()`, and `await close()` on unload.

    variants: a model group, (name, accuracy against the reference, runner) per
    variant, the reference (`runner`) first; each gets an L(b) of its own."""
    latency = LatencyModel(max_batch_size, quantile=settings.latency_quantile)
    chooser = None
    if variants:
        variants = [variants[0], *sorted(variants[1:], key=lambda v: -v[1])]
        chooser = VariantChooser(
            [Variant(variants[0][0], variants[0][1], latency)]
            + [Variant(name, accuracy, LatencyModel(max_batch_size, quantile=settings.latency_quantile))
               for name, accuracy, _ in variants[1:]],
            accuracy_budget,
        )
    execution = getattr(settings, "execution", "auto")
    # Inline runs occupy the event-loop thread: there is only ever one at a time.
    executors = 1 if execution == "inline" else settings.executors
    core = SchedulerCore(
        latency=latency,
        max_batch_size=max_batch_size,
        policy=settings.policy,
        executors=executors,
        max_queued_rows=settings.max_queued_rows,
        max_queue_delay_s=settings.max_queue_delay_ms / 1e3,
        preferred_batch_sizes=settings.preferred_batch_sizes,
        # Fields added after the first config schema: read with defaults so an
        # older SchedulingSettings still works.
        early_refusal=getattr(settings, "early_refusal", None),
        # batch-class pieces run on a lowest-priority thread beside online work,
        # except when everything is asked to run on the event loop
        background_batch=execution != "inline",
        background_pieces=background_pieces(getattr(settings, "batch_threads", 0), runner),
        busy_hold_s=getattr(settings, "busy_hold_ms", 0.0) / 1e3,
        variants=chooser,
    )
    padding = None
    if getattr(settings, "padding", None):
        padding = Padding.parse(settings.padding, settings.padding_buckets, settings.padded_outputs,
                                runner.signature)
    return AsyncDispatcher(
        model=model,
        version=version,
        runner=runner,
        core=core,
        metrics=metrics,
        clock=clock,
        execution=execution,
        inline_max_s=getattr(settings, "inline_max_ms", 2.0) / 1e3,
        profile=settings.profile,
        profile_budget_s=getattr(settings, "profile_budget_s", 2.0),
        padding=padding,
        variant_runners=[r for _, _, r in variants[1:]] if variants else None,
    )
