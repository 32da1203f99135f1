"""Runs uvicorn with drain-aware signal handling.

SIGTERM (or the first SIGINT) starts the drain, in this order, every wait bounded:
  a. /readyz answers 503 at once;
  b. requests are still accepted and served for FRAMEWORM_DRAIN_DELAY_S, because Kubernetes
     keeps routing to a terminating pod until its endpoints update;
  c. the listener closes; uvicorn closes keep-alive connections after their response;
  d. in-flight requests finish within FRAMEWORM_SHUTDOWN_TIMEOUT_S; at that deadline the app
     answers what is still waiting with a 503 problem body (uvicorn's own, longer, timeout
     would drop the connections instead);
  e. the lifespan hook runs the GracefulShutdown hooks, flushes spans, releases the model;
  f. the process exits 0 (plain uvicorn re-raises the signal and exits 143).
A second SIGTERM or SIGINT exits at once. A model that cannot be loaded exits with code 3.
With --workers N, app.workers supervises N such processes: a worker drains at SIGTERM, exits at
once at SIGQUIT, and leaves SIGINT (the group's Ctrl-C) to the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Generator
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import uvicorn
from dotenv import dotenv_values

from app.config import ENV_FILE, Settings
from app.connection import BoundedHttpToolsProtocol as BoundedProtocol
from app.connection import bounded_protocol
from app.production import APIKeyAuth
from app.production.shutdown import attach_server, detach_server
from app.secret_files import SECRET_FIELDS
from app.telemetry.logs import configure_logging
from app.workers import WORKER_EXIT_NOW, WORKER_SIGNALS, supervise

if TYPE_CHECKING:
    from app.lifespan import Lifecycle

log = logging.getLogger("frameworm.serve")

UVICORN_GRACE_MARGIN_S = 5.0  # uvicorn's own deadline is later than the app's
EXIT_MODEL_FAILED = 3
EXIT_CANNOT_LISTEN = 1  # uvicorn would exit 3 itself, the code that means "no model"
LISTEN_BACKLOG = 2048  # uvicorn's own default; it listens again with its own when it starts


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        settings: Settings,
        lifecycle: Lifecycle,
        *,
        worker: bool = False,
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.lifecycle = lifecycle
        self.worker = worker  # one of several, under a supervisor that forwards signals
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shedding: asyncio.Task[None] | None = None
        self._stop_signalled = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # As uvicorn's, except that the captured signal is not re-raised: a clean drain exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = WORKER_SIGNALS if self.worker else (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Noted here, not when the loop begins the drain: two signals in a row both run before
        # the loop's next turn, and the second must still be the second.
        draining = self._stop_signalled or self.lifecycle.shutdown.is_shutting_down
        if self.worker and sig == signal.SIGTERM and draining:
            return  # the same stop reaching this worker twice: the group's, and its forwarded copy
        if self._loop is None:
            self.should_exit = self.force_exit = True  # before startup
            return
        self._stop_signalled = True
        exit_now = draining or sig == WORKER_EXIT_NOW
        self._loop.call_soon_threadsafe(self._force_exit if exit_now else self.begin_drain)

    def _force_exit(self) -> None:
        """The second signal: exit now, after answering what is still open 503 `shutting-down`
        (uvicorn cancels what is left, and answers each with a bare 500 and a traceback). The
        listener closes first: a client answered 503 that connects again is refused, not reset."""
        for listener in self.servers:
            listener.close()
        shedding = self._shedding or self._start_shedding()
        shedding.add_done_callback(lambda _: self._exit_now())
        self.lifecycle.skip_release()

    def _exit_now(self) -> None:
        self.should_exit = self.force_exit = True

    def begin_drain(self) -> None:
        if not self.lifecycle.begin_drain():
            return
        delay, timeout = self.settings.drain_delay_s, self.settings.shutdown_timeout_s
        if not self.lifecycle.ever_ready:
            # Never ready, so in no endpoint list: no traffic to wait out. The load is
            # abandoned when the lifespan ends, right after the listener closes.
            delay = 0.0
        open_requests = len(self.server_state.tasks)  # uvicorn's, probes included
        log.info(
            "drain started: not ready; %d request(s) open; the listener closes in %.1fs",
            open_requests,
            delay,
        )
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._close_listener)
        loop.call_later(delay + timeout, self._start_shedding)

    def _start_shedding(self) -> asyncio.Task[None]:
        # Referenced until done: the loop holds tasks weakly, and this one must run to the end.
        self._shedding = asyncio.get_running_loop().create_task(self._shed_stragglers())
        return self._shedding

    def _close_listener(self) -> None:
        log.info("drain: closing the listener")
        self.should_exit = True

    async def _shed_stragglers(self) -> None:
        items, requests = await self.lifecycle.shed_stragglers()
        # Answers their clients are not reading would hold the exit until uvicorn's own
        # deadline (UVICORN_GRACE_MARGIN_S later), which cancels them with a traceback.
        connections = [c for c in self.server_state.connections if isinstance(c, BoundedProtocol)]
        stalled = sum(connection.abort_if_stalled() for connection in connections)
        requests += sum(connection.refuse_open_head() for connection in connections)
        if items or requests or stalled:
            log.warning(
                "shutdown deadline: answered %d item(s) queued or running and %d other "
                "request(s) with 503; %d connection(s) not reading their answers aborted",
                items,
                requests,
                stalled,
            )

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        watcher = asyncio.create_task(self._exit_if_model_fails())
        try:
            await super().serve(sockets)  # type: ignore[arg-type]
        finally:
            watcher.cancel()

    async def on_tick(self, counter: int) -> bool:
        # uvicorn remakes its default headers (the Date) as a new list each second, and each
        # request keeps the list of the second its head came in: a request answered seconds
        # later (a slow model, a long upload, the drain) carried that stale Date. One list,
        # updated in place, is what every open request answers with.
        headers = self.server_state.default_headers
        should_exit = await super().on_tick(counter)
        if self.server_state.default_headers is not headers:
            headers[:] = self.server_state.default_headers
            self.server_state.default_headers = headers
        return should_exit

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The main loop, which ticks, has ended: the drain ticks on (up to the shutdown timeout).
        ticking = asyncio.get_running_loop().create_task(self._keep_date_fresh())
        try:
            await super().shutdown(sockets)
        finally:
            ticking.cancel()

    async def _keep_date_fresh(self) -> None:
        while True:
            await asyncio.sleep(1)
            await self.on_tick(0)  # the tick on which the main loop remakes the headers

    async def _exit_if_model_fails(self) -> None:
        await self.lifecycle.model_failed.wait()
        log.error("the model could not be loaded; exiting with code %d", EXIT_MODEL_FAILED)
        self.exit_code = EXIT_MODEL_FAILED
        self.should_exit = True


def ensure_a_key(settings: Settings) -> None:
    """README's first command must end in a working call: in development, with no key at all,
    create one and print it once; in production, refuse to start instead."""
    if not settings.auth_enabled:
        return
    # Built even with a bootstrap key: what fails here (the pepper, the key store) would fail
    # in each of several workers, each with its own line, after the port is bound.
    auth = APIKeyAuth(settings=settings)
    # Read with a bootstrap key too: it reaches the key store (an unreachable Redis is one line
    # here, where it was a ready server answering every other key 503).
    usable = any(r.revoked is None and not r.is_expired() for r in auth.list_keys())
    if settings.bootstrap_api_key is not None or usable:
        return
    if settings.env == "production":
        raise ValueError(
            "no API key exists: set FRAMEWORM_BOOTSTRAP_API_KEY_FILE or create one "
            "with `frameworm keys create OWNER`"
        )
    if settings.api_key_store == "hashed-file":  # read-only: a Secret mounts it
        raise ValueError(
            "the hashed-file key store holds no usable key: set FRAMEWORM_BOOTSTRAP_API_KEY_FILE "
            "or put a key in its Secret"
        )
    key = auth.create_key("bootstrap", scopes=("infer", "admin"))
    log.warning("no API key existed: created a bootstrap key (development only)")
    print(  # noqa: T201  # shown once, on the console, never logged
        f"\n  Bootstrap API key (shown once, store it now):\n  {key}\n"
        f"  curl -H 'X-API-Key: {key}' ...\n",
        file=sys.stderr,
        flush=True,
    )


def check_rate_limit_is_shared(settings: Settings) -> None:
    """Several workers with in-memory rate limits: each counts alone, so a key gets its limit
    once per worker. Warned about in development; in production, refused (ValueError)."""
    storage = urlsplit(settings.rate_limit_storage.removeprefix("async+")).scheme
    if settings.workers < 2 or not settings.rate_limit_enabled or storage != "memory":
        return
    problem = (
        f"{settings.workers} workers each keep their own in-memory rate limits, so a key may "
        f"make {settings.workers} times FRAMEWORM_RATE_LIMIT; set FRAMEWORM_RATE_LIMIT_STORAGE "
        "to a redis:// URL shared by the workers"
    )
    if settings.env == "production":
        raise ValueError(problem + " (or serve with one worker)")
    log.warning(problem)


# FRAMEWORM_* variables read outside the settings.
OTHER_VARIABLES = frozenset({"FRAMEWORM_S3_ENDPOINT_URL"})
# What Kubernetes sets for a Service whose name starts so (the chart turns these links off).
_SERVICE_LINK = re.compile(r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT\w*|PORT_\d+_(TCP|UDP|SCTP)\w*)$")
_SERVICE_ADDRESS = re.compile(r"(tcp|udp|sctp)://[^/]+:\d+$")  # <SERVICE>_PORT's value


def warn_of_settings_without_effect(settings: Settings) -> None:
    """Settings that serve, but cannot do what they ask for."""
    known = {f"FRAMEWORM_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    known |= {f"FRAMEWORM_{name.upper()}_FILE" for name in SECRET_FIELDS}
    # The .env file's lines too, which the settings read beside the environment.
    variables = {**dotenv_values(ENV_FILE), **os.environ}
    for name in sorted(variables):
        upper = name.upper()  # as the settings read them
        link = _SERVICE_LINK.match(upper) or _SERVICE_ADDRESS.match(variables[name] or "")
        if upper.startswith("FRAMEWORM_") and upper not in known and not link:
            log.warning("%s is no setting (misspelt?): ignored", name)
    if settings.auto_rollback and not settings.follow_stage:
        log.warning(
            "FRAMEWORM_AUTO_ROLLBACK is ignored: automatic rollback watches the versions the "
            "stage follower switches to, and FRAMEWORM_FOLLOW_STAGE is off"
        )
    if settings.max_batch_size > settings.max_queue_items:
        # Not refused: it serves correctly, with batches of at most the queue's bound.
        log.warning(
            "FRAMEWORM_MAX_BATCH_SIZE=%d is above FRAMEWORM_MAX_QUEUE_ITEMS=%d: a batch never "
            "holds more than %d items, and the warm-up runs sizes no batch will take",
            settings.max_batch_size,
            settings.max_queue_items,
            settings.max_queue_items,
        )


def run(settings: Settings) -> int:
    """Serve until drained; the process exit code."""
    configure_logging(settings.log_format, settings.log_level)
    warn_of_settings_without_effect(settings)
    check_rate_limit_is_shared(settings)
    ensure_a_key(settings)
    # Bound before anything starts (the model load included), and by us: on a taken port
    # uvicorn exits 3 itself, which here means that the model could not be loaded.
    try:
        sock = listening_socket(settings)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        return EXIT_CANNOT_LISTEN
    # uvicorn logs this line only for sockets it binds itself; operators look for it.
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sock.getsockname()[1]
    )
    with sock:
        if settings.workers > 1:
            return supervise(settings, sock, serve_one)
        return serve_one(settings, sock)


def listening_socket(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        # Listening at once claims the port: only bound, another server could bind it too
        # (SO_REUSEADDR) and listen first, and this one would start, serving nothing.
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_one(
    settings: Settings, sock: socket.socket | None = None, *, worker: bool = False
) -> int:
    """One server process (the only one, or a worker on an inherited socket)."""
    # Imported here, in the process that serves: a supervisor of workers holds no torch.
    from app.inference.host import TORCH_THREADS
    from app.main import create_app

    app = create_app(settings)
    lifecycle: Lifecycle = app.state.lifecycle
    attach_server(lifecycle.join)  # GracefulShutdown.start() inside the app joins this drain
    server = DrainingServer(uvicorn_config(settings, app), settings, lifecycle, worker=worker)
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        detach_server()
    code = 1 if server.exit_code == 0 and not server.started else server.exit_code
    if any(t.name in TORCH_THREADS and t.is_alive() for t in threading.enumerate()):
        # A load the drain abandoned (a SIGTERM during start-up or a switch), or a forward pass
        # past the release's wait, may be inside torch: the interpreter's exit would tear torch
        # down under it and the C++ runtime abort the process (SIGABRT, exit 134). Exit without
        # finalization, the logs flushed first (the drain has flushed the telemetry). A forced
        # exit skipped the release: the runner's idle thread is left, and was said to be busy.
        if not server.force_exit:
            log.info("a model load or forward pass is still running; not waiting for it")
        logging.shutdown()
        os._exit(code)
    return code  # 1: e.g. the port was taken, which uvicorn has logged


def uvicorn_config(settings: Settings, app: object = None) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]  # None only to bind the supervisor's socket
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with limits on the request head (its size, and its time once begun), on
        # a connection that sends nothing (timeout_keep_alive) and on an unread write.
        http=bounded_protocol(
            settings.max_header_kb * 1024, settings.write_stall_s, settings.header_timeout_s
        ),
        # No WebSocket routes: an upgrade request is served as plain HTTP (404 or 405, with the
        # security headers and the access log), not answered 403 bare by the WebSocket layer.
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s + UVICORN_GRACE_MARGIN_S),
        limit_concurrency=None,
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
