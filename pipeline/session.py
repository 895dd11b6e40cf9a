"""Where a build's tasks run: the Ray session (the cluster at an address, or a new embedded one) and the SIGTERM
that stops the driver cleanly."""

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)
SLOW_START_S = 30  # an idle machine starts the embedded Ray in a few seconds
LOADED = "the machine looks loaded (other processes hold its CPUs or memory): fewer --workers start faster"


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
        start_embedded(workers, object_store_mb)
    try:
        yield
    finally:
        ray.shutdown()


def start_embedded(workers: int, object_store_mb: int) -> None:
    """A new embedded Ray (address="local", even where `ray start` left a cluster on this machine), started
    quietly; a slow or failed start says what helps."""
    import ray

    # Ray 2.60 turns token authentication on for every new local cluster and warns so on every start (its logger,
    # only while this cluster starts: the process's environment and Ray's own settings are left as they are)
    token_setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level, started = token_setup.level, time.monotonic()
    token_setup.setLevel(logging.ERROR)
    try:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=object_store_mb * 2**20)
    except Exception as error:  # noqa: BLE001 - Ray raises bare Exception and TimeoutError alike on a start
        ray.shutdown()  # whatever it had started
        first = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"the embedded Ray did not start after {time.monotonic() - started:.0f} s ({first}): "
                           f"{LOADED}, then retry") from error
    finally:
        token_setup.setLevel(level)
    seconds = time.monotonic() - started
    if seconds > SLOW_START_S:
        log.warning("Ray took %.0f s to start: %s", seconds, LOADED)


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
