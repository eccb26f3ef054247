"""`kairos batch --low-priority`: the client lowers itself (every thread) before it connects."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from kairos.client.batch import cli

CHECK = textwrap.dedent("""
    import os, threading
    from kairos.client.batch.cli import lower_priority
    started = threading.Event(); release = threading.Event(); seen = {}
    def before():  # a thread that exists before the call
        started.set(); release.wait(10); seen["before"] = os.sched_getscheduler(0)
    thread = threading.Thread(target=before); thread.start(); started.wait(10)
    got = lower_priority()
    release.set(); thread.join()
    after = threading.Thread(target=lambda: seen.setdefault("after", os.sched_getscheduler(0)))
    after.start(); after.join()
    idle = os.SCHED_IDLE
    print(got, seen["before"] == idle, os.sched_getscheduler(0) == idle, seen["after"] == idle)
""")


def test_the_flag_reaches_the_job_options(tmp_path):
    args = cli.build_parser().parse_args(["m", "-i", "x.npy", "-o", "y.npy", "--low-priority"])
    assert cli.options_from_args(args).low_priority is True
    args = cli.build_parser().parse_args(["m", "-i", "x.npy", "-o", "y.npy"])
    assert cli.options_from_args(args).low_priority is False


@pytest.mark.parametrize("low", [True, False])
def test_run_job_lowers_the_process_first_only_when_asked(monkeypatch, tmp_path, low):
    calls = []
    monkeypatch.setattr(cli, "lower_priority", lambda: calls.append(1) or "idle")
    options = cli.JobOptions(model="m", input=tmp_path / "missing.npy", output=tmp_path / "y.npy",
                             low_priority=low)
    with pytest.raises(cli.JobError):  # the missing input is found after lowering, before connecting
        asyncio.run(cli.run_job(options))
    assert calls == ([1] if low else [])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_every_thread_existing_and_new_becomes_sched_idle():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["idle", "True", "True", "True"]
