"""The development host: drives a `FunctionApp` the way the Azure Functions host does.

The real host cannot be installed offline (Core Tools download it and the extension bundles, see
https://learn.microsoft.com/azure/azure-functions/functions-run-local), so this
process loads the app's functions and provides what the host would: HTTP triggers under `/api/`
with auth levels and the host's route templates and order (catch-all `{*rest}`, constraints; see
devstack/routes.py), NCRONTAB timers with `past_due` and `run_on_startup`, queue triggers polling
Azure Storage with `host.json`'s `extensions.queues` settings and a poison queue, and queue output
bindings. It is a development tool, not a production runtime.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hmac
import inspect
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, QueueServiceClient
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.ncrontab import Schedule, parse_schedule
from devstack.routes import RouteTemplate, RouteTemplateError, routes_in_host_order
from shared.store.storage import QUEUE_API_VERSION

log = logging.getLogger("devhost")

BANNER = (
    "bc-dataverse-sync dev host: a development tool that drives function_app.app like the Azure "
    "Functions host would. It is NOT the Azure Functions runtime; deploy to Azure Functions for production."
)
# Starlette lets every method through to `_dispatch` (it defaults to GET only), which checks them.
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]
# While a function runs, the real host keeps its message invisible for 10 minutes and renews that
# lease at half time, so a message held by a host that died comes back after up to 10 minutes.
# DEVHOST_PROCESSING_LEASE_SECONDS shortens it for tests and `make chaos`; renewal keeps a long run
# (a full resync) from being delivered twice whatever the lease.
PROCESSING_LEASE_SECONDS = 600


def processing_lease_seconds() -> int:
    return int(os.environ.get("DEVHOST_PROCESSING_LEASE_SECONDS") or PROCESSING_LEASE_SECONDS)


_FUNCTIONS: dict[int, list[Any]] = {}


def functions_of(app: func.FunctionApp) -> list[Any]:
    """`app.get_functions()` may be called only once per app object (azure-functions-python-worker
    #1867), so remember its answer for every host started in this process."""
    if id(app) not in _FUNCTIONS:
        _FUNCTIONS[id(app)] = list(app.get_functions())
    return _FUNCTIONS[id(app)]


def _timespan_seconds(value: str | float | int | None, default: float) -> float:
    """host.json TimeSpans are `hh:mm:ss[.fff]`; plain numbers are taken as seconds."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    parts = value.split(":")
    if len(parts) == 3:
        return int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    return float(value)


@dataclass(frozen=True)
class QueueOptions:
    """`extensions.queues` from host.json, with the host's documented defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 16
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, host_json: dict[str, Any], cores: int | None = None) -> QueueOptions:
        q = host_json.get("extensions", {}).get("queues", {})
        batch = min(32, int(q.get("batchSize", 16)))
        cores = cores or os.cpu_count() or 1
        return cls(
            batch_size=batch,
            new_batch_threshold=int(q.get("newBatchThreshold", (batch // 2) * cores)),
            max_polling_interval=max(0.1, _timespan_seconds(q.get("maxPollingInterval"), 60.0)),
            visibility_timeout=_timespan_seconds(q.get("visibilityTimeout"), 0.0),
            max_dequeue_count=int(q.get("maxDequeueCount", 5)),
            message_encoding=str(q.get("messageEncoding", "base64")).lower(),
        )


@dataclass
class Invocation:
    function: str
    trigger: str
    started: float
    duration_ms: float
    outcome: str  # "succeeded" | "failed" | "poisoned"
    error: str = ""


class _Lease:
    """Keeps a message invisible while its function runs: renewed at half the lease, as the host
    does. Each renewal gives a new pop receipt, stored on the message for the final delete."""

    def __init__(self, client: QueueClient, message: Any, seconds: int) -> None:
        self._client, self._message, self._seconds = client, message, seconds
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._renew, name="lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._done.wait(self._seconds / 2):
            with self._lock:
                if self._done.is_set():
                    return
                try:
                    receipt = self._client.update_message(
                        self._message, pop_receipt=self._message.pop_receipt, visibility_timeout=self._seconds
                    )
                except Exception as exc:  # another host took it (lease lost) or storage is away
                    log.warning("could not renew the lease of message %s: %s", self._message.id, exc)
                    continue
                self._message.pop_receipt = receipt.pop_receipt

    def stop(self) -> None:
        with self._lock:  # a renewal under way finishes first, so the receipt is the latest
            self._done.set()


class _Out:
    """An output binding (`func.Out`) that remembers what the function set."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


@dataclass(frozen=True)
class HttpRoute:
    function: str
    template: RouteTemplate
    methods: frozenset[str]  # empty: every method, as on the host
    level: str
    endpoint: Callable[[Request], Awaitable[Response]]


def _resolve_app_setting(expression: str) -> str:
    """`%NAME%` binding expressions are replaced by the app setting NAME, as the host does."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise KeyError(f"binding expression %{name}% refers to an app setting that is not set")
        return os.environ[name]

    return re.sub(r"%(\w+)%", lookup, expression)


class DevHost:
    def __init__(
        self,
        app: func.FunctionApp,
        *,
        storage_connection_string: str,
        host_json: dict[str, Any] | None = None,
        function_key: str | None = None,
        master_key: str | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.functions: dict[str, Any] = {f.get_function_name(): f for f in functions_of(app)}
        self.host_json = host_json or {}
        self.queue_options = QueueOptions.from_host_json(self.host_json)
        self.function_key = function_key
        self.master_key = master_key
        self.invocations: deque[Invocation] = deque(maxlen=10_000)
        # Functions running now: `invocations` only records finished ones, and a test waiting for a
        # quiet host must not mistake a long timer run (the upkeep at start-up) for silence.
        self.running = 0
        self._running_lock = threading.Lock()
        self._now = now
        self._queues = QueueServiceClient.from_connection_string(
            storage_connection_string, api_version=QUEUE_API_VERSION
        )
        self._stop = threading.Event()
        self._wake: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._pools: list[ThreadPoolExecutor] = []
        self.http_app = self._build_http_app()

    # ----------------------------------------------------------------------------------- start
    def start(self) -> None:
        """Start timers and queue pollers in background threads (HTTP is served by `http_app`)."""
        log.info(BANNER)
        for name, fn in self.functions.items():
            trigger = fn.get_trigger()
            if isinstance(trigger, func.decorators.timer.TimerTrigger):
                self._spawn(f"timer-{name}", self._run_timer, name, fn)
            elif isinstance(trigger, func.decorators.queue.QueueTrigger):
                queue_name = _resolve_app_setting(trigger.queue_name)
                self._wake.setdefault(queue_name, threading.Event())
                self._spawn(f"queue-{name}", self._run_queue, name, fn, queue_name)

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout=15)
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------------------------ invocation
    def _call(self, name: str, fn: Any, trigger_kind: str, kwargs: dict[str, Any]) -> Any:
        outs = {
            b.name: _Out()
            for b in fn.get_bindings()
            if b.get_dict_repr().get("direction") == func.decorators.core.BindingDirection.OUT
            and b.type == "queue"
        }
        started = time.perf_counter()
        with self._running_lock:
            self.running += 1
        try:
            result = fn.get_user_function()(**kwargs, **outs)
            if inspect.isawaitable(result):
                raise TypeError("the dev host runs synchronous functions only (the app has no async ones)")
        except Exception as exc:
            self._record(name, trigger_kind, started, "failed", exc)
            raise
        finally:
            with self._running_lock:
                self.running -= 1
        self._flush_outputs(fn, outs)
        self._record(name, trigger_kind, started, "succeeded")
        return result

    def _flush_outputs(self, fn: Any, outs: dict[str, _Out]) -> None:
        by_name = {b.name: b for b in fn.get_bindings()}
        for arg, out in outs.items():
            value = out.get()
            if value is None:
                continue
            queue_name = _resolve_app_setting(by_name[arg].get_dict_repr()["queueName"])
            client = self._queues.get_queue_client(queue_name)
            for item in value if isinstance(value, list) else [value]:
                text = item if isinstance(item, str) else json.dumps(item)
                client.send_message(self._encode(text))
            if queue_name in self._wake:  # a write from the app triggers an immediate poll
                self._wake[queue_name].set()

    def _record(
        self, name: str, kind: str, started: float, outcome: str, exc: BaseException | None = None
    ) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.invocations.append(
            Invocation(name, kind, started, ms, outcome, f"{type(exc).__name__}: {exc}" if exc else "")
        )
        level = logging.INFO if outcome == "succeeded" else logging.WARNING
        log.log(
            level, "Executed '%s' (%s, %s, %.1f ms)%s", name, kind, outcome, ms, f": {exc}" if exc else ""
        )

    # ------------------------------------------------------------------------------------ HTTP
    def _build_http_app(self) -> Starlette:
        self.http_routes = routes_in_host_order(
            (name, self._http_route(name, fn))
            for name, fn in self.functions.items()
            if isinstance(fn.get_trigger(), func.decorators.http.HttpTrigger)
        )
        # Starlette only receives the request; which function serves it is decided by `_dispatch`,
        # with the host's template semantics and order (devstack/routes.py), which Starlette's router
        # does not have (no catch-all `{*rest}`, no constraints, most specific route first).
        return Starlette(
            routes=[
                Route("/admin/functions/{name}", self._admin_invoke, methods=["POST"]),
                Route("/api", self._dispatch, methods=HTTP_METHODS),
                Route("/api/{rest:path}", self._dispatch, methods=HTTP_METHODS),
            ]
        )

    def _http_route(self, name: str, fn: Any) -> HttpRoute:
        trigger = fn.get_trigger()
        methods = frozenset(str(getattr(m, "value", m)).upper() for m in (trigger.methods or []))
        level = str(getattr(trigger.auth_level, "value", trigger.auth_level) or "function")
        try:
            template = RouteTemplate.parse(trigger.route or name)
        except RouteTemplateError as exc:
            raise RouteTemplateError(f"function {name}: {exc}") from None
        return HttpRoute(name, template, methods, level, self._http_endpoint(name, fn, trigger.name, level))

    async def _dispatch(self, request: Request) -> Response:
        # The raw path keeps `%2F` inside a segment, as ASP.NET Core does; the templates decode values.
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1").split("?", 1)[0].removeprefix("/api").removeprefix("/")
        method = request.method.upper()
        path_matched: list[HttpRoute] = []
        for route in self.http_routes:
            values = route.template.match(path)
            if values is None:
                continue
            if route.methods and method not in route.methods:
                path_matched.append(route)
                continue
            request.scope["path_params"] = values
            return await route.endpoint(request)
        if path_matched:
            # The host treats the methods as one more route constraint and answers 404 here; the dev
            # host answers 405 with Allow, which says more to whoever is developing against it.
            allowed = ", ".join(sorted(set().union(*(r.methods for r in path_matched))))
            return JSONResponse({"error": f"use {allowed} for /api/{path}"}, 405, headers={"Allow": allowed})
        return JSONResponse({"error": f"no function serves /api/{path}"}, 404)

    def _key_ok(self, request: Request, level: str) -> bool:
        if level == "anonymous":
            return True
        given = request.headers.get("x-functions-key") or request.query_params.get("code") or ""
        keys = [self.master_key] if level == "admin" else [self.function_key, self.master_key]
        return any(k and hmac.compare_digest(given.encode(), k.encode()) for k in keys)

    def _http_endpoint(
        self, name: str, fn: Any, arg: str, level: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self._key_ok(request, level):
                return JSONResponse(
                    {"error": "a valid function key is required (x-functions-key or ?code=)"}, 401
                )
            body = await request.body()
            http_request = func.HttpRequest(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                params=dict(request.query_params),
                route_params=dict(request.path_params),
                body=body,
            )
            try:
                result = await run_in_threadpool(self._call, name, fn, "http", {arg: http_request})
            except Exception:
                log.exception("function %s raised", name)
                return JSONResponse({"error": "the function raised an exception; see the host log"}, 500)
            return _to_starlette_response(result)

        return endpoint

    async def _admin_invoke(self, request: Request) -> Response:
        """`POST /admin/functions/<name>` runs a non-HTTP function now (master key), like the host."""
        if not self._key_ok(request, "admin"):
            return JSONResponse({"error": "the master key is required"}, 401)
        name = request.path_params["name"]
        fn = self.functions.get(name)
        if fn is None or not isinstance(fn.get_trigger(), func.decorators.timer.TimerTrigger):
            return JSONResponse({"error": f"no timer function named {name!r}"}, 404)
        await run_in_threadpool(self.invoke_timer, name)
        return Response(status_code=202)

    # ---------------------------------------------------------------------------------- timers
    def invoke_timer(self, name: str, past_due: bool = False) -> None:
        fn = self.functions[name]
        self._call(name, fn, "timer", {fn.get_trigger().name: TimerRequest(past_due=past_due)})

    def _run_timer(self, name: str, fn: Any) -> None:
        trigger = fn.get_trigger()
        try:
            schedule: Schedule = parse_schedule(_resolve_app_setting(trigger.schedule))
        except (KeyError, ValueError) as exc:
            log.error("timer %s disabled: %s", name, exc)
            return
        if trigger.run_on_startup:
            self._fire(name, fn, past_due=False)
        due = schedule.next_after(self._now())
        while not self._stop.is_set():
            wait = (due - self._now()).total_seconds()
            if wait > 0 and self._stop.wait(min(wait, 1.0)):
                return
            if wait > 0:
                continue
            # A run is past due when the host fires it later than scheduled by more than the
            # schedule can absorb, e.g. the previous run overran or the process was suspended.
            late = (self._now() - due).total_seconds()
            self._fire(name, fn, past_due=late > 1.0)
            due = schedule.next_after(max(due, self._now() - dt.timedelta(seconds=1)))

    def _fire(self, name: str, fn: Any, past_due: bool) -> None:
        with contextlib.suppress(Exception):  # already logged by _call; a timer keeps running
            self._call(name, fn, "timer", {fn.get_trigger().name: TimerRequest(past_due=past_due)})

    # ---------------------------------------------------------------------------------- queues
    def _encode(self, text: str) -> str:
        if self.queue_options.message_encoding == "base64":
            return base64.b64encode(text.encode()).decode("ascii")
        return text

    def _run_queue(self, name: str, fn: Any, queue_name: str) -> None:
        opts = self.queue_options
        client = self._queues.get_queue_client(queue_name)
        poison = self._queues.get_queue_client(queue_name + "-poison")
        with contextlib.suppress(Exception):
            client.create_queue()
        pool = ThreadPoolExecutor(
            max_workers=opts.batch_size + opts.new_batch_threshold, thread_name_prefix=name
        )
        self._pools.append(pool)
        # As the host: a new batch is fetched once no more than `newBatchThreshold` messages are
        # being processed, so at most batchSize + newBatchThreshold run (and are held) at once.
        running = [0]
        fewer = threading.Condition()

        def done(_future: Any) -> None:
            with fewer:
                running[0] -= 1
                fewer.notify_all()

        wake = self._wake[queue_name]
        idle_delay = 0.1
        while not self._stop.is_set():
            with fewer:
                if not fewer.wait_for(lambda: running[0] <= opts.new_batch_threshold, timeout=0.5):
                    continue  # (looks at `_stop` again)
            try:
                batch = list(
                    # One GetMessages request for the whole batch, as the host does (without
                    # `messages_per_page` the SDK asks for one message per request).
                    client.receive_messages(
                        messages_per_page=opts.batch_size,
                        max_messages=opts.batch_size,
                        visibility_timeout=processing_lease_seconds(),
                    )
                    .by_page()
                    .next()
                )
            except StopIteration:
                batch = []
            except Exception as exc:  # storage unreachable: back off, keep polling
                log.warning("polling %s failed: %s", queue_name, exc)
                batch = []
            if not batch:
                wake.wait(idle_delay)
                wake.clear()
                idle_delay = min(opts.max_polling_interval, idle_delay * 2)
                continue
            idle_delay = 0.1
            for message in batch:
                with fewer:
                    running[0] += 1
                pool.submit(self._process_message, name, fn, client, poison, message).add_done_callback(done)

    def _process_message(
        self, name: str, fn: Any, client: QueueClient, poison: QueueClient, message: Any
    ) -> None:
        opts = self.queue_options
        raw: str = message.content
        if opts.message_encoding == "base64":
            try:
                body = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                # The host does not call the function for an undecodable message: straight to poison.
                log.error(
                    "Message decoding has failed! Check MessageEncoding settings. MessageId=%s", message.id
                )
                self._to_poison(name, client, poison, message, raw, "undecodable base64")
                return
        else:
            body = raw.encode()
        host_message = HostQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        lease = _Lease(client, message, processing_lease_seconds())
        try:
            self._call(name, fn, "queue", {fn.get_trigger().name: host_message})
        except Exception:
            lease.stop()
            if message.dequeue_count >= opts.max_dequeue_count:
                self._to_poison(name, client, poison, message, raw, "max dequeue count reached")
            else:
                with contextlib.suppress(Exception):
                    client.update_message(
                        message,
                        pop_receipt=message.pop_receipt,
                        visibility_timeout=int(opts.visibility_timeout),
                    )
            return
        lease.stop()
        with contextlib.suppress(Exception):
            client.delete_message(message, pop_receipt=message.pop_receipt)

    def _to_poison(
        self, name: str, client: QueueClient, poison: QueueClient, message: Any, raw: str, why: str
    ) -> None:
        with contextlib.suppress(Exception):
            poison.create_queue()
        poison.send_message(raw)  # the original body, byte for byte, so it can be replayed
        client.delete_message(message, pop_receipt=message.pop_receipt)
        self.invocations.append(Invocation(name, "queue", time.perf_counter(), 0.0, "poisoned", why))
        log.warning("Message %s moved to %s-poison (%s)", message.id, client.queue_name, why)


def _to_starlette_response(result: Any) -> Response:
    if result is None:
        return Response(status_code=204)
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
        media = result.mimetype
        if result.charset and media and "charset" not in media:
            media = f"{media}; charset={result.charset}"
        return Response(result.get_body(), status_code=result.status_code, headers=headers, media_type=media)
    if isinstance(result, (str, bytes)):
        return Response(result)
    return JSONResponse(result)


def load_host_json(path: Path | str = "host.json") -> dict[str, Any]:
    return json.loads(Path(path).read_text())
