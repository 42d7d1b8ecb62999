"""Work done one step ahead in a background thread, so reading, hashing and tokenizing the next
window overlaps the forward pass of this one (tokenizers and torch release the GIL while they work).

The background thread builds an item only while fewer than `depth` items are ahead of the one the
consumer holds (a turn taken before building, given back when the consumer takes an item): with
depth 1, window k+1 is built while window k computes, and window k+2 only once the consumer has
taken k+1, i.e. is done with k (its results written before k+2 is looked up in the cache), so
two windows at most are held. An exception in the background is raised in the consumer, and a
consumer that stops early (an error, a break) stops the background thread before going on.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()


def in_background(items: Iterator[T], depth: int = 1, name: str = "teachfit-prefetch") -> Iterator[T]:
    """Yield what `items` yields, in order, computed by a background thread at most `depth` items
    ahead of the consumer's (item k+depth is built only after the consumer has taken item k+depth-1).
    Its exceptions reach the consumer at the item where they happened."""
    box: queue.Queue = queue.Queue()  # never more than `depth` entries: the turns bound it
    turns = threading.Semaphore(depth)
    stop = threading.Event()

    def take_turn() -> bool:  # False once the consumer has stopped
        while not stop.is_set():
            if turns.acquire(timeout=0.1):
                return True
        return False

    def work() -> None:
        try:
            while take_turn():
                item = next(items, _END)
                box.put((item, None))
                if item is _END:
                    return
        except BaseException as error:  # handed to the consumer, raised there
            box.put((_END, error))
        finally:
            getattr(items, "close", lambda: None)()  # a generator's own cleanup, in its thread

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = box.get()
            turns.release()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
