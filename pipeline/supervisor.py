"""A build runs in a child process that this one watches, so that its last line is always the project's own.

When an embedded Ray's raylet or agent dies (the OOM killer, a crash), Ray's core worker ends the driver from
C++ (exit 1, its own log line last): no Python handler runs, and the user would be left with a Ray message. The
child reports through a pipe that it finished its own way (its summary or its one error line printed); when it
ends without that, the watching process says so in one line.
"""

import os
import signal
import subprocess
import sys

STATUS_FD = "MMCORPUS_STATUS_FD"  # set in the child: the pipe it reports its own end through


def supervised() -> bool:
    """Whether this process is the watched child (or must not be watched: a Ray job's driver is Ray's own)."""
    return STATUS_FD in os.environ


def run_watched(argv: list[str], command: str) -> int:
    """Run `mmcorpus <argv>` in a child process and return its exit status; one line when it died unannounced."""
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], env={**os.environ, STATUS_FD: str(write)},
                             pass_fds=(write,))
    os.close(write)
    # Ctrl-C reaches the child with the whole foreground group; SIGTERM is sent to this process alone
    handlers = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))}
    try:
        code = child.wait()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    with os.fdopen(read, "rb") as pipe:
        announced = pipe.read() == b"done"
    if not announced:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        print(f"mmcorpus: {command} failed: the build process ended unexpectedly ({how}; Ray's last message is above: "
              "a worker node, the raylet or its agent died); run the same command again to resume", file=sys.stderr)
        return 1
    return code


def announce_end() -> None:
    """In the watched child, after its last line: tell the watcher that it ended its own way."""
    if STATUS_FD in os.environ:
        fd = int(os.environ.pop(STATUS_FD))
        os.write(fd, b"done")
        os.close(fd)
