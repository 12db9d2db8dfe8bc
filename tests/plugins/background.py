"""`Background(target, *args)`: runs ``target(*args, stop)`` in a thread for the duration of a
``with`` block; ``stop`` is a threading.Event set when the block ends."""
from __future__ import annotations

import threading


class Background:
    def __init__(self, target, *args):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=target, args=(*args, self.stop), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
