"""Work done one step ahead in a background thread, so reading, hashing and tokenizing the next
window overlaps the forward pass of this one (tokenizers and torch release the GIL while they work).

The queue between the two is bounded (`depth` items ahead: memory stays flat), an exception in
the background is raised in the consumer, and a consumer that stops early (an error, a break)
stops the background thread before going on.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()


def in_background(items: Iterator[T], depth: int = 1, name: str = "teachfit-prefetch") -> Iterator[T]:
    """Yield what `items` yields, in order, computed by a background thread at most `depth` items
    ahead of the consumer. Its exceptions reach the consumer at the item where they happened."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry: tuple) -> bool:  # False once the consumer has stopped
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as error:  # handed to the consumer, raised there
            offer((_END, error))
        finally:
            getattr(items, "close", lambda: None)()  # a generator's own cleanup, in its thread

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = box.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
