"""Hostile and odd inputs: each has a defined outcome, and one worker survives them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.errors import JobFailedError
from fleet.processes import start_worker, wait_healthy
from fleet.registry import Queue
from fleet.render_settings import RenderSettings
from fleet.settings import Settings
from imgworker.render import RenderRequest, options_of, render
from tests import hostile, images

OPTIONS = options_of(RenderSettings(), max_pixels=50_000_000, decode_budget_mb=hostile.DECODE_BUDGET_MB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[hostile.Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, hostile.build(root)


def test_corpus_covers_every_listed_input(corpus: tuple[Path, list[hostile.Case]]) -> None:
    names = {case.filename for case in corpus[1]}
    assert len(names) == 33
    assert {f"orientation-{n}" for n in range(2, 9)} <= names


@pytest.mark.parametrize("index", range(33))
def test_each_input_has_its_defined_outcome(corpus: tuple[Path, list[hostile.Case]], index: int) -> None:
    root, cases = corpus
    case = cases[index]
    result = render(root, RenderRequest(index, case.filename, case.ext), OPTIONS)
    if case.outcome == "ok":
        assert result.ok, f"{case.name}: {result.error_type}: {result.error}"
        if case.check:
            case.check(root, {name: out for name, out in result.outputs.items()})
    else:
        assert (result.ok, result.permanent, result.error_type) == (False, True, case.outcome), result.error
        assert result.error  # a clear reason
    assert not list(root.rglob(".*.tmp"))


async def test_one_worker_survives_the_whole_corpus(settings: Settings, client: FleetClient) -> None:
    cases = hostile.build(settings.storage_path)
    settings = settings.replace(max_pixels=50_000_000, render_decode_budget_mb=hostile.DECODE_BUDGET_MB)
    worker = start_worker(["img"], settings)
    try:
        await wait_healthy(client, Queue.IMG)
        jobs = [await client.render_upload(i, c.filename, c.ext) for i, c in enumerate(cases)]
        for case, job in zip(cases, jobs, strict=True):
            if case.outcome == "ok":
                result = await job.result(timeout=120, poll_delay=0.05)
                assert result["ok"], case.name
                if case.check:
                    case.check(settings.storage_path, result["outputs"])
            else:
                with pytest.raises(JobFailedError) as failure:
                    await job.result(timeout=120, poll_delay=0.05)
                assert failure.value.error_type == case.outcome, case.name
        # Still the same process, still serving.
        assert worker.poll() is None
        images.jpeg(settings.storage_path, "after.jpg", 800, 600)
        after = await client.render_upload(999, "after", "jpg")
        assert (await after.result(timeout=60, poll_delay=0.05))["ok"] is True
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    dead = await DeadLetters(client.redis, settings.namespace, 3600).list("img")
    assert sorted(letter.error_type for letter in dead) == sorted(
        c.outcome for c in cases if c.outcome != "ok"
    )
    assert all(letter.tries == 1 for letter in dead)  # bad input is never retried
