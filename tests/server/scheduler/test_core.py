"""The assembled core, driven by hand: a lone request at once, completion and failure, describe, policies."""

from __future__ import annotations

import pytest
from kairos.server.scheduler.core import DONE
from kairos_testing.scheduling import ids, make_core


def test_idle_server_runs_a_lone_request_at_once(clock, req):
    core = make_core()
    core.admit(req(request_id="a"), clock.now())
    batch = core.next_batch(clock.now())
    assert ids(batch) == ["a"] and batch.rows == 1
    assert core.next_batch(clock.now()) is None  # the one executor is busy


def test_finish_completes_tickets_and_teaches_latency(clock, req):
    core = make_core(max_batch=8)
    ticket = core.admit(req(), clock.now())
    batch = core.next_batch(clock.now())
    before = core.latency.observations
    assert core.finish(batch, clock.now(), 0.0011) == [ticket]
    assert ticket.state == DONE and core.idle()
    assert core.latency.observations == before + 1


def test_failed_batch_fails_its_requests_and_frees_the_executor(clock, req):
    core = make_core(max_batch=8)
    ticket = core.admit(req(), clock.now())
    batch = core.next_batch(clock.now())
    assert core.fail(batch, clock.now()) == [ticket]
    assert core.free == 1 and core.counts.failed == 1


def test_describe_reports_policy_table_queue_and_counts(clock, req):
    core = make_core(max_batch=8)
    core.admit(req(), clock.now())
    info = core.describe()
    assert info["policy"] == "slo" and info["max_batch_size"] == 8
    assert [row["batch_size"] for row in info["latency_table"]] == [1, 2, 4, 8]
    assert info["queue"] == {"requests": 1, "rows": 1}
    assert info["counts"]["admitted"] == 1


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy"):
        make_core(policy="magic")
