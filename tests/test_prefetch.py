"""The background prefetch: order kept, at most `depth` items ahead, errors raised where they
happened, and a consumer that stops early stops the thread."""
import threading
import time

import pytest

from teachfit.prefetch import in_background


def test_order_and_bound():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for item in in_background(items(), depth=2):
        time.sleep(0.002)
        seen.append(item)
        # produced: what the consumer has + at most 2 more (queued or being built)
        assert len(produced) <= len(seen) + 2
    assert seen == list(range(50))


def test_depth_one_builds_one_item_ahead():
    """Item i is built only once the consumer is done with item i - 2 (the engine: window k's
    results are written before window k + 2 is looked up in the cache)."""
    done = []

    def items():
        for i in range(30):
            assert len(done) >= i - 1, f"item {i} built while the consumer had finished {len(done)}"
            yield i

    for item in in_background(items()):
        time.sleep(0.002)
        done.append(item)
    assert done == list(range(30))


def test_an_error_reaches_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad row 3")

    seen = []
    with pytest.raises(ValueError, match="bad row 3"):
        for item in in_background(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_stops_the_thread():
    closed = threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stream = in_background(items(), name="prefetch-under-test")
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.is_set()  # the generator's cleanup ran, in its thread
    assert not [t for t in threading.enumerate() if t.name == "prefetch-under-test"]
