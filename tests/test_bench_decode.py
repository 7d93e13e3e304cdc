"""`bench decode` measurement pieces: the RSS sampler's reset is not undone by a sample taken before it."""

import threading
import time

from leaninfer.bench.decode import RssSampler


def test_rss_sample_from_before_a_reset_does_not_raise_the_new_peak(monkeypatch):
    reading, release = threading.Event(), threading.Event()
    calls = {"n": 0}

    def current():  # the sampler thread reads a big RSS (the previous backend), then stalls until reset ran
        if threading.current_thread() is not threading.main_thread():
            calls["n"] += 1
            if calls["n"] == 1:
                reading.set()
                release.wait(5)
                return 900 * 2**20
        return 100 * 2**20

    monkeypatch.setattr(RssSampler, "current", staticmethod(current))
    sampler = RssSampler(interval=0.01)
    assert reading.wait(5)
    sampler.reset()  # next backend starts: 100 MiB
    release.set()
    time.sleep(0.1)
    sampler.close()
    assert sampler.peak_mb == 100 and sampler.start_mb == 100
