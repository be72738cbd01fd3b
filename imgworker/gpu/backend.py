"""The GPU render backend: one worker process per GPU, an in-worker batcher in front of it,
and the CPU process pool of the same worker behind it.

Requests wait in the batcher until GPU_BATCH_SIZE of them are there or the first has waited
GPU_BATCH_WAIT_MS (uploads are taken before bulk renders); a thread hands the batch to the
GPU. Whatever the GPU does not take (routed away by its header) or cannot render (a decode,
resize or encode error) is rendered by the process pool, one image at a time: a batch never
fails because of one image.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fleet.logging import get_logger
from fleet.objects import first_line
from imgworker.backend import Priority, ProcessPoolBackend
from imgworker.gpu.pipeline import GpuRenderer, Outcome, ToCpu
from imgworker.render import RenderOptions, RenderRequest, RenderResult

log = get_logger("imgworker.gpu")


@dataclass(slots=True)
class _Waiting:
    request: RenderRequest
    options: RenderOptions
    outcome: asyncio.Future[Outcome]
    since: float


class GpuBackend:
    """A :class:`~imgworker.backend.RenderBackend` over one GPU and the worker's process pool."""

    def __init__(
        self,
        renderer: GpuRenderer,
        cpu: ProcessPoolBackend,
        *,
        batch_size: int = 16,
        batch_wait_s: float = 0.02,
    ) -> None:
        self.renderer = renderer
        self.cpu = cpu
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.size = cpu.size + batch_size
        self.counts: collections.Counter[str] = collections.Counter()
        """Renders by where they ran: ``gpu``, ``cpu`` (routed there by the header) and
        ``fallback`` (the GPU failed that image, the pool rendered it)."""
        self._waiting: dict[Priority, collections.deque[_Waiting]] = {
            p: collections.deque() for p in Priority
        }
        self._arrived = asyncio.Event()
        self._gpu = ThreadPoolExecutor(1, thread_name_prefix="gpu", initializer=renderer.codec.bind)
        self._batcher: asyncio.Task[None] | None = None
        self._on_gpu = 0

    @property
    def options(self) -> RenderOptions:
        """The pool's: one set of render options per worker, whichever backend renders."""
        return self.cpu.options

    @property
    def busy(self) -> int:
        return self.cpu.busy + self._on_gpu

    async def warm_up(self) -> None:
        await self.cpu.warm_up()

    async def render_batch(
        self,
        requests: Sequence[RenderRequest],
        *,
        options: RenderOptions | None = None,
        priority: Priority = Priority.UPLOAD,
    ) -> list[RenderResult]:
        chosen = options or self.options
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._run(), name="gpu-batcher")
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(r, chosen, loop.create_future(), loop.time()) for r in requests]
        self._waiting[priority].extend(waiting)
        self._arrived.set()
        return list(await asyncio.gather(*(self._settle(w, priority) for w in waiting)))

    async def _settle(self, waiting: _Waiting, priority: Priority) -> RenderResult:
        outcome = await waiting.outcome
        if isinstance(outcome, RenderResult):
            self.counts["gpu"] += 1
            return outcome
        self.counts["fallback" if outcome.failed else "cpu"] += 1
        if outcome.failed:
            log.warning(
                "gpu render failed; rendering on the CPU",
                file=waiting.request.filename,
                reason=outcome.reason,
            )
        [result] = await self.cpu.render_batch([waiting.request], options=waiting.options, priority=priority)
        return result

    def _queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _take(self) -> list[_Waiting]:
        """The next batch: uploads first, then bulk renders; ones cancelled meanwhile dropped."""
        batch: list[_Waiting] = []
        for priority in Priority:
            queue = self._waiting[priority]
            while queue and len(batch) < self.batch_size:
                waiting = queue.popleft()
                if not waiting.outcome.done():
                    batch.append(waiting)
        return batch

    async def _run(self) -> None:
        """Forever: wait for a full batch or the oldest request's deadline, render it on the
        GPU thread, hand each outcome back as the pool finishes storing it."""
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            oldest = min((q[0].since for q in self._waiting.values() if q), default=loop.time())
            while self._queued() < self.batch_size and (left := oldest + self.batch_wait_s - loop.time()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = self._take()
            if not self._queued():
                self._arrived.clear()
            if not batch:
                continue
            self._on_gpu += len(batch)
            try:
                items = [(w.request, w.options) for w in batch]
                futures = await loop.run_in_executor(self._gpu, self.renderer.render, items)
            except Exception as exc:  # noqa: BLE001 - a broken batch: every image of it to the CPU
                futures = [_done(ToCpu(f"GPU batch failed: {first_line(exc)}", failed=True)) for _ in batch]
            for waiting, future in zip(batch, futures, strict=True):
                future.add_done_callback(functools.partial(self._hand_back, loop, waiting))

    def _hand_back(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting, future: Future[Outcome]) -> None:
        """On the pool's thread: deliver to the event loop's."""
        loop.call_soon_threadsafe(self._deliver, waiting, future)

    def _deliver(self, waiting: _Waiting, future: Future[Outcome]) -> None:
        self._on_gpu -= 1
        if waiting.outcome.done():
            return
        error = future.exception()
        if error is None:
            waiting.outcome.set_result(future.result())
        else:
            waiting.outcome.set_result(ToCpu(f"GPU render failed: {first_line(error)}", failed=True))  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
            self._batcher = None
        for queue in self._waiting.values():
            for waiting in queue:
                if not waiting.outcome.done():
                    waiting.outcome.cancel()
            queue.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._gpu.shutdown)
        self.renderer.pool.shutdown(wait=True)
        await self.cpu.close()


def _done(outcome: Outcome) -> Future[Outcome]:
    future: Future[Outcome] = Future()
    future.set_result(outcome)
    return future
