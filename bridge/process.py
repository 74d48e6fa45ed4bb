"""Process control for the command line: one place for what every command needs.

- exit codes: 0 ok, 1 a failure (systemd restarts), 2 bad configuration or usage;
- logging to stderr, as text or JSON lines, with secrets hidden;
- `Process`: SIGTERM/SIGINT set its `stop` event; the first one also arms a hard
  deadline (a daemon thread that ends the process if shutdown hangs: Python 3.11 can
  swallow a cancellation inside `asyncio.wait_for`, and a library may hang in its own
  shutdown); a second signal can end the process at once. A `reloadable` process
  takes SIGHUP as a request to read its configuration again (its `reload` event);
  any other keeps SIGHUP's default (the process ends);
- `run_main`: `asyncio.run` with those signals and a default executor whose threads
  never hold the process at exit;
- `bounded` and `cancel`: shutdown steps that cannot hang the caller.

`modbus-bridge run`, `demo` and the commissioning commands all run through here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable, Collection, Coroutine
from typing import Any, ParamSpec, TypeVar

from bridge.logs import JsonFormatter, Redactor

log = logging.getLogger("bridge")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # a bad configuration is a usage error too
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP  # `systemctl reload` sends it (ExecReload=)

_P = ParamSpec("_P")
_T = TypeVar("_T")


LOG_FORMATS = ("text", "json")
_redactor = Redactor()


def setup_logging(level: str, log_format: str = "text", *, shard: str | None = None) -> None:
    """Log to stderr: `text` (one line per event, for journald) or `json` (one JSON
    object per line, for log shippers). Secrets given to `hide_secrets` never show.
    `shard` (e.g. ``2/4``) is named in every line: `[shard 2/4]`, or a `shard` field."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(None if shard is None else {"shard": shard}))
    else:
        where = "" if shard is None else f" [shard {shard}]"
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s %(name)s{where}: %(message)s")
        )
    handler.addFilter(_redactor)
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def hide_secrets(secrets: Collection[str]) -> None:
    """From now on, these values show as `***` in every log line."""
    _redactor.secrets = tuple(s for s in secrets if s)


class Process:
    """The stop switch and the last-resort deadline of one command's process.

    `hard_exit_after`: seconds from the start of shutdown (the first signal, or
    `shutting_down()`) after which the process ends with exit code 1 whatever still
    runs: a hung shutdown is a bug that systemd and tests should see.
    `force_on_second_signal`: a second Ctrl-C ends the process at once (interactive
    commands: the user does not want to wait).
    `reloadable`: SIGHUP sets `reload` (the daemon reads its configuration again).
    """

    def __init__(
        self,
        *,
        hard_exit_after: float,
        force_on_second_signal: bool = False,
        reloadable: bool = False,
    ) -> None:
        self.hard_exit_after = hard_exit_after
        self.force_on_second_signal = force_on_second_signal
        self.reloadable = reloadable
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self.signals = 0
        self._timer: threading.Timer | None = None

    def on_signal(self, signame: str) -> None:
        self.signals += 1
        if self.signals > 1:
            if self.force_on_second_signal:
                print(f"{signame} again: forced exit", file=sys.stderr, flush=True)
                os._exit(EXIT_FAILURE)
            return
        log.info("%s received: shutting down", signame)
        self.shutting_down()
        self.stop.set()

    def hold_reloads(self) -> None:
        """Until the event loop takes SIGHUP over, ignore it: its default action ends the
        process, and systemd counts an end by SIGHUP as clean, so a `systemctl reload`
        during start-up would stop the bridge for good. Call it before reading the
        configuration, which then is the newest anyway."""
        if self.reloadable:
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(RELOAD_SIGNAL, signal.SIG_IGN)

    def on_reload_signal(self, signame: str) -> None:
        if self.stop.is_set():
            return  # shutting down: nothing to reload into
        log.info("%s received: reading the configuration again", signame)
        self.reload.set()

    def shutting_down(self) -> None:
        """Shutdown has begun: arm the hard deadline (once)."""
        if self._timer is not None:
            return
        seconds = self.hard_exit_after

        def expire() -> None:
            log.error("shutdown did not finish in %.1fs; exiting anyway", seconds)
            logging.shutdown()
            os._exit(EXIT_FAILURE)

        self._timer = threading.Timer(seconds, expire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: every call in its own daemon thread, never joined.

    Blocking calls end up there: paho's connect with its TLS handshake (up to 5 s against
    a broker that accepts TCP but does not answer) and DNS lookups. `asyncio.run` and the
    interpreter join a ThreadPoolExecutor's threads at exit, so one such call would hold
    the process for seconds after an orderly shutdown. Calls are rare (connect attempts,
    spaced by backoff), so a thread each is cheap. (A ThreadPoolExecutor subclass only
    because asyncio accepts nothing else as the default executor; its pool is unused.)
    """

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=work, name="bridge-blocking", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: a thread still blocked dies with the process."""


Main = Callable[[Process], Coroutine[Any, Any, int]]


async def _main_with_signals(main: Main, process: Process) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(DaemonExecutor())
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, process.on_signal, sig.name)
            installed.append(sig)
    if process.reloadable:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(RELOAD_SIGNAL, process.on_reload_signal, RELOAD_SIGNAL.name)
            installed.append(RELOAD_SIGNAL)
    try:
        return await main(process)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


EVENT_LOOP_ENV = "BRIDGE_EVENT_LOOP"  # auto (default) | asyncio | uvloop


def event_loop_choice() -> str:
    """Which event loop to run: uvloop when it is installed (the `uvloop` extra;
    10-30 % less CPU per read at 1,000 devices, bench/RESULTS.md), else asyncio's.
    `BRIDGE_EVENT_LOOP=asyncio` forces the standard loop."""
    wanted = os.environ.get(EVENT_LOOP_ENV, "auto").strip().lower()
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        if wanted == "uvloop":
            log.warning("%s=uvloop, but uvloop is not installed: using asyncio", EVENT_LOOP_ENV)
        return "asyncio"
    return "uvloop"


def run_main(main: Main, process: Process) -> int:
    """Run `main(process)` in a new event loop; its result is the exit code."""
    try:
        if event_loop_choice() == "uvloop":
            import uvloop  # noqa: PLC0415

            return uvloop.run(_main_with_signals(main, process))
        return asyncio.run(_main_with_signals(main, process))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return EXIT_OK
    finally:
        process.disarm()


MAX_DESCRIPTORS = 1 << 20  # the soft limit is raised at most to this (Linux's nr_open)
# Descriptors the bridge needs besides one per Modbus host: the broker, the event loop,
# signals, logs, name lookups, /proc reads, and up to 64 metrics clients.
OWN_DESCRIPTORS = 128


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard limit (one descriptor per Modbus
    host: a large fleet needs more than the usual soft limit of 1,024) and return the
    soft limit in force. Where that is not allowed (the systemd unit sets LimitNOFILE
    and filters setrlimit) the limit stays as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def descriptor_warning(limit: int, hosts: int) -> str | None:
    """A warning when `limit` open files leave too few for `hosts` Modbus hosts."""
    needed = hosts + OWN_DESCRIPTORS
    if needed <= limit:
        return None
    return (
        f"the open file limit ({limit}) is too low for {hosts} hosts: the bridge needs "
        f"about {needed} (one per host and {OWN_DESCRIPTORS} of its own); raise it "
        "(LimitNOFILE= in the systemd unit, ulimit -n) or shard the fleet"
    )


async def bounded(coro: Coroutine[Any, Any, Any], timeout: float, what: str) -> None:
    """Await `coro` for at most `timeout` seconds; log and move on past it.

    asyncio.wait (not wait_for) so a swallowed cancellation cannot hang us here.
    """
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        log.warning("%s did not finish in %.1fs", what, timeout)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %s", what, task.exception())


async def cancel(task: asyncio.Task[Any] | None, timeout: float, what: str) -> None:
    """Cancel `task` and wait (at most `timeout` s) for it to end, whatever it raises."""
    if task is None:
        return
    task.cancel()

    async def settle() -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    await bounded(settle(), timeout, what)
