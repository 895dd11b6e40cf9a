"""Submitting a build to a Ray cluster as a Ray job (`mmcorpus build --ray-address http://head:8265`).

The job carries the project as its working directory (configs, samples, code; not .venv or outputs) and runs
the same `mmcorpus build` there, whose runner then joins the cluster (Ray sets RAY_ADDRESS inside jobs). The
cluster's nodes need the pinned dependencies and the model files (`mmcorpus fetch-assets`, or MMCORPUS_CACHE
pointing at shared storage), and `--out` must be storage every node sees.
"""

import asyncio
import logging
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import ConfigError, git_commit
from stages.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

EXCLUDES = [".venv", ".git", "out", "**/__pycache__", ".pytest_cache", ".ruff_cache", "bench/results.json",
            "*.egg-info"]
AGENT_WAIT_S = 120  # a freshly started head answers HTTP before its job agent is up
ANSWER_WAIT_S = 30  # how long a Ray address may take to accept a connection before the build gives up
# Where outputs and models live, passed to the job; credentials are not: the nodes hold their own (an IAM role,
# their environment), as a secret in a job's environment shows on the dashboard.
FORWARDED = ("MMCORPUS_CACHE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_PROFILE")


def is_job_address(address: str | None) -> bool:
    """A dashboard URL means: submit a job. Anything else (`ray://`, `host:port`, `auto`): join directly."""
    return bool(address) and address.startswith(("http://", "https://"))


def check_answers(address: str, wait_s: float = ANSWER_WAIT_S) -> None:
    """Fail within `wait_s` when nothing accepts connections at a Ray address (`host:port`, `ray://host:port`,
    `http://head:8265`; `auto` and `local` are Ray's to resolve): Ray itself retries for minutes."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    port = parts.port or {"http": 80, "https": 443, "ray": 10001}.get(parts.scheme)
    if not parts.hostname or not port:
        raise ConfigError(f"Ray address {address!r}: expected host:port, ray://host:port or http://head:8265")
    deadline, error = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((parts.hostname, port), timeout=min(5.0, wait_s)):
                return
        except OSError as failure:
            error = failure
            time.sleep(1)
    reason = getattr(error, "strerror", None) or error
    raise ConfigError(f"Ray address {address}: nothing answers at {parts.hostname}:{port} after {wait_s:.0f} s "
                      f"({reason}); is the cluster up?")


def submit_build(address: str, build_args: list[str], wait: bool = True) -> int:
    """Submit `mmcorpus build <build_args>` as a Ray job, stream its logs, return 0 when it succeeded."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or Path(
            os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).exists()):
        os.environ["RAY_AUTH_MODE"] = "token"  # clusters started by `ray start` require the token by default
    check_answers(address)
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["python", "-m", "pipeline.cli", "build", *build_args])
    env = {key: value for key, value in os.environ.items() if key in FORWARDED or key.startswith("FSSPEC_")}
    if commit := git_commit():
        env["MMCORPUS_GIT_COMMIT"] = commit  # the job's copy of the project has no .git
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": env}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    log.info("submitted Ray job %s to %s: %s", job_id, address, entrypoint)
    if not wait:
        return 0

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(stream())
    status = client.get_job_status(job_id)
    log.info("Ray job %s: %s", job_id, status)
    return 0 if status == JobStatus.SUCCEEDED else 1
