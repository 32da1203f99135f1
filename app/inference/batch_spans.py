"""A batch's forward pass, and the batcher's spans: a sampled request's wait in the queue, and
the forward pass of a batch holding one (the provider samples what it is handed).
"""

from __future__ import annotations

import time

import numpy as np
from opentelemetry import trace

from app.inference.pending import Pending
from app.inference.runner import ModelRunner
from models.errors import ArtefactError


def sampled(context: trace.SpanContext | None) -> bool:
    return context is not None and context.is_valid and context.trace_flags.sampled


def sampled_trace_id(context: trace.SpanContext | None) -> str | None:
    """The trace id, as logs and exemplars write it, of a sampled request; else None."""
    return format(context.trace_id, "032x") if context is not None and sampled(context) else None


def record_queue_wait(tracer: trace.Tracer, enqueued_ns: int, dispatched_ns: int) -> None:
    """The wait as a span of the current (the request's) trace, timed after the fact."""
    queued = tracer.start_span("inference.queue", start_time=enqueued_ns)
    queued.end(end_time=dispatched_ns)


async def traced_forward(
    tracer: trace.Tracer,
    runner: ModelRunner,
    arrays: list[np.ndarray],
    requests: list[trace.SpanContext | None],
    items: int,
) -> list[np.ndarray]:
    """The forward pass as a span: a child of the first sampled request, linked to all."""
    contexts = [c for c in requests if c is not None and c.is_valid]
    parent = next((c for c in contexts if c.trace_flags.sampled), None)
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else None
    with tracer.start_as_current_span(
        "inference.forward",
        context=context,
        links=[trace.Link(c) for c in contexts],
        attributes={
            "frameworm.batch_size": items,
            "frameworm.requests": len(requests),
            "frameworm.model": runner.manifest.name,
            "frameworm.version": runner.manifest.version,
        },
    ):
        return await runner.run(arrays)


async def forward_batch(
    runner: ModelRunner, batch: list[Pending], items: int, tracer: trace.Tracer | None
) -> list[np.ndarray]:
    """The batch's requests joined, run (traced when one of them is sampled), checked."""
    arrays = (
        batch[0].arrays
        if len(batch) == 1
        else [np.concatenate(parts) for parts in zip(*(p.arrays for p in batch), strict=True)]
    )
    if tracer is None or not any(sampled(p.span) for p in batch):
        outputs = await runner.run(arrays)
    else:
        dispatched = time.time_ns()
        for pending in batch:
            pending.dispatched_ns = dispatched
        spans = [p.span for p in batch]
        outputs = await traced_forward(tracer, runner, arrays, spans, items)
    # Split by rows next: a model answering another number (a reduction over the batch,
    # say) would hand requests each other's rows, or none.
    if any(out.shape[:1] != (items,) for out in outputs):
        raise ArtefactError(f"the model answered {items} items with other row counts")
    return outputs
