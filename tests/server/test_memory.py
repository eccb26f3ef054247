"""server/memory.py: the malloc settings that let large request buffers reuse freed pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from kairos.server import memory

# Buffers the size of a 4,096-row mlp256 request, allocated on one thread and freed on
# another (as the front end's threads and Python do), three alive at a time; prints the
# minor page faults per buffer.
BUFFERS = textwrap.dedent("""
    import collections, queue, resource, sys, threading
    if sys.argv[1] == "apply":
        from kairos.server.memory import keep_freed_memory
        assert keep_freed_memory()
    handoff = queue.Queue(maxsize=3)
    def producer():
        for i in range(300):
            handoff.put(bytearray((4 << 20) + 65536 * (i % 5)))
        handoff.put(None)
    def consumer():
        held = collections.deque()
        while (buffer := handoff.get()) is not None:
            held.append(buffer)
            if len(held) > 2:
                held.popleft()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 300)
""")


class FakeLibc:
    def __init__(self, answer: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer


def test_settings_go_to_mallopt(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    assert memory.keep_freed_memory({}) is True
    assert libc.calls == memory.malloc_settings()
    assert (memory.M_ARENA_MAX, 1) in libc.calls


def test_a_refused_setting_is_reported(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc(answer=0))
    assert memory.keep_freed_memory({}) is False


@pytest.mark.parametrize("name", memory.OPERATOR_SETTINGS)
def test_an_operators_own_malloc_settings_win(monkeypatch, name):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    assert memory.keep_freed_memory({name: "1"}) is False and libc.calls == []


def test_without_glibc_nothing_is_done(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_freed_memory({}) is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._glibc() is None,
                    reason="glibc's malloc only")
def test_large_buffers_reuse_freed_pages():
    def faults(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", BUFFERS, mode], capture_output=True,
                              text=True, check=True, env={"PATH": "/usr/bin:/bin"})
        return float(done.stdout)

    assert faults("apply") < 0.6 * faults("default")
