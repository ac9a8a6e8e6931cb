"""A standard-library HTTP client of AppWorld's environment server (``appworld serve
environment``, ``appworld/serve/environment.py`` in appworld 0.1.3.post1).

Every endpoint is a POST with a JSON body; success is ``200 {"output": ...}``:

- ``/initialize {task_id, experiment_name?, <AppWorld init settings>}`` ->
  ``{task_id, instruction, supervisor{first_name, last_name, email, phone_number}, datetime}``
- ``/execute {task_id, code}`` -> str (stdout, ``"Execution successful."`` or text starting
  ``"Execution failed. Traceback:"``; failing code is still a 200)
- ``/task_completed {task_id}`` -> bool
- ``/evaluate {task_id, suppress_errors}`` -> ``{success, difficulty, num_tests,
  passes[{requirement, label}], failures[{requirement, trace, label}]}``
- ``/close {task_id}`` -> null

A wrong or uninitialised task id is a plain-text ``500 Internal Server Error``; a missing
field a ``422`` with FastAPI's JSON. One server holds one task at a time, so every env that
runs in parallel needs its own server (see ``claim_server``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

START_COMMAND = "appworld serve environment --port {port}"


class AppWorldError(RuntimeError):
    """A request to the AppWorld server failed; the message names the URL."""


class AppWorldServerUnreachable(AppWorldError, ConnectionError):
    """No server answers at the URL (after the retries)."""


class AppWorldServerError(AppWorldError):
    """The server answered with a status other than 200, or a body without ``output``."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AppWorldTimeout(AppWorldError, TimeoutError):
    """No answer within the request timeout (never retried: the code may be running)."""


def start_command(url: str) -> str:
    """The shell command that starts a server for ``url``."""
    port = urllib.parse.urlsplit(url).port or 80
    return START_COMMAND.format(port=port)


class AppWorldClient:
    """One AppWorld environment server.

    Connection failures before an answer (refused, reset, dropped) are retried
    ``max_retries`` times with exponential backoff (``retry_backoff_s`` * 2**i), so a server
    that restarts is waited for. Timeouts and HTTP errors are not retried.
    """

    def __init__(self, url: str, *, timeout_s: float = 120.0, max_retries: int = 3, retry_backoff_s: float = 0.5):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"AppWorld server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    def post(self, endpoint: str, **body: Any) -> Any:
        """``POST /endpoint`` with ``body`` as JSON; returns the response's ``output``."""
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/{endpoint}", data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        for attempt in range(self.max_retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    text = response.read().decode()
                break
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:1000]
                raise AppWorldServerError(
                    f"AppWorld server at {self.url}: /{endpoint} failed with HTTP {error.code}: {detail}", error.code
                ) from None
            except (TimeoutError, socket.timeout) as error:
                raise AppWorldTimeout(f"AppWorld server at {self.url}: /{endpoint} timed out after {self.timeout_s} s") from error
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise AppWorldTimeout(
                        f"AppWorld server at {self.url}: /{endpoint} timed out after {self.timeout_s} s"
                    ) from error
                if attempt == self.max_retries:
                    raise AppWorldServerUnreachable(
                        f"no AppWorld server reachable at {self.url} (/{endpoint}: {reason}; "
                        f"{self.max_retries + 1} attempts). Start one with `{start_command(self.url)}` "
                        "(in the venv where appworld is installed, with its data downloaded)."
                    ) from error
                time.sleep(self.retry_backoff_s * 2**attempt)
        try:
            return json.loads(text)["output"]
        except (ValueError, KeyError, TypeError):
            raise AppWorldServerError(f"AppWorld server at {self.url}: /{endpoint} answered without 'output': {text[:300]!r}") from None

    def initialize(self, task_id: str, **settings: Any) -> dict[str, Any]:
        return self.post("initialize", task_id=task_id, **settings)

    def execute(self, task_id: str, code: str) -> str:
        return self.post("execute", task_id=task_id, code=code)

    def task_completed(self, task_id: str) -> bool:
        return bool(self.post("task_completed", task_id=task_id))

    def evaluate(self, task_id: str) -> dict[str, Any]:
        # Without suppress_errors a failing unit test is a bare 500, not a report.
        return self.post("evaluate", task_id=task_id, suppress_errors=True)

    def close(self, task_id: str) -> None:
        self.post("close", task_id=task_id)


def default_lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "rllib-seeupo-appworld-locks")


def claim_server(urls: list[str], lock_dir: str | None = None) -> tuple[str, IO]:
    """The first of ``urls`` that no other env on this machine holds, and the open lock file
    that holds it (an exclusive ``flock``, released when the file is closed or the process
    dies), so that parallel envs in any process never share a server.

    Raises:
        AppWorldError: every server is held; the message says how many are needed.
    """
    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, exist_ok=True)
    for url in urls:
        path = os.path.join(lock_dir, hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16] + ".lock")
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                continue
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{url} pid={os.getpid()}\n")
        handle.flush()
        return url, handle
    raise AppWorldError(
        f"all {len(urls)} AppWorld server(s) are held by other envs ({', '.join(urls)}): one server holds one "
        "task at a time, so run one server per parallel env (num_env_runners x num_envs_per_env_runner, or the "
        "evaluation batch size) and list them all in server_urls"
    )
