"""Where a build's tasks run: the Ray session (the cluster at an address, or a new embedded one) and the SIGTERM
that stops the driver cleanly."""

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator


class Terminated(Exception):
    """SIGTERM reached the driver: stop scheduling, shut Ray down, exit 143."""


@contextlib.contextmanager
def ray_session(address: str | None, workers: int, object_store_mb: int) -> Iterator[None]:
    """Ray for the runner's tasks: the cluster at `address`, or else a new embedded one; none is started where Ray
    already runs (a test's session)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        from pipeline.cluster import check_answers

        check_answers(address)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # address="local": a new embedded Ray, even where `ray start` left a cluster on this machine
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=object_store_mb * 2**20)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the driver (a handler set after Ray's own, and restored afterwards)."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()
