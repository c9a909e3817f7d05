"""The local server's REST API, TF Serving's: `GET /v1/models/NAME[/versions/N][/metadata]` and
`POST /v1/models/NAME[/versions/N]:predict` in the columnar `inputs` format. Every request gets
a JSON answer (a malformed one a JSON 4xx); bodies are bounded (`max_body_bytes`, and
`BODY_BUDGET` of them at once), requests are answered by at most `rest_workers` at a time, at
most `rest_queue` are in flight (more get 503 with Retry-After at once), the listen backlog is
`rest_backlog`, and clients that stop sending are dropped after `request_timeout` seconds. An
internal error is answered 500 with a request id, its text logged under that id."""

import contextlib
import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

from tfprobunet.defaults import REST_BACKLOG, REST_QUEUE
from tfprobunet.serving.local_server.errors import internal_error, release_freed_memory
from tfprobunet.serving.local_server.limits import JSON_BYTES_PER_VALUE
from tfprobunet.serving.wire import HTTP_STATUS, ServingError, status_error

try:  # the `serving` extra
    from google.protobuf import json_format
except ImportError:
    json_format = None

logger = logging.getLogger("tfprobunet.serving")

# The bodies being read or waiting for a slot, in bytes, at most this many times
# `max_body_bytes` (and twice that in memory for the one being parsed per REST worker).
BODY_BUDGET = 4
# Seconds a 503 asks its client to wait (`Retry-After`).
RETRY_AFTER_SECONDS = 1
# The most bytes of a refused request's body read (and dropped) before its 503, so that closing
# the connection does not reset it: a client then reads its answer.
DRAINED_BYTES = 2**16


_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?P<rest>/metadata|:predict)?$")
_REST_KEYS = {"signature_name", "inputs", "instances"}


def _rest_tensor(key, value, dtype):
    """A JSON value as an ndarray of `dtype`: rectangular, numbers, integers for integer
    inputs, within the dtype's range."""
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged nesting
        raise status_error("INVALID_ARGUMENT",
                           f"Input `{key}` is not a rectangular array: {e}") from None
    integer = np.issubdtype(dtype, np.integer)
    kinds = "iu" if integer else "iuf"
    if array.dtype.kind not in kinds:
        wanted = "integers" if integer else "numbers"
        raise status_error("INVALID_ARGUMENT", (
            f"Input `{key}` must hold {wanted} ({np.dtype(dtype).name}); received "
            f"{json.dumps(value)[:80]}."))
    if integer and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise status_error("INVALID_ARGUMENT", (
                f"Input `{key}` is out of the {np.dtype(dtype).name} range [{info.min}, "
                f"{info.max}]; received {json.dumps(value)[:80]}."))
    return array.astype(dtype)


def _rest_predict_request(servable, body):
    """The signature name and inputs of a REST predict body, or INVALID_ARGUMENT saying what
    is wrong with it."""
    if not isinstance(body, dict):
        raise status_error("INVALID_ARGUMENT", (
            "The request body must be a JSON object, {\"signature_name\": ..., \"inputs\": "
            f"{{name: value}}}}; received a {type(body).__name__}."))
    unknown = sorted(set(body) - _REST_KEYS)
    if "output_filter" in unknown:
        raise status_error("INVALID_ARGUMENT", (
            "`output_filter` is not part of TF Serving's REST API, which returns every output; "
            "over gRPC, `PredictRequest.output_filter` selects them."))
    if unknown:
        raise status_error("INVALID_ARGUMENT", f"Unknown key(s) {unknown}: the body takes "
                                               "`signature_name` and `inputs`.")
    if "inputs" not in body:
        raise status_error("INVALID_ARGUMENT", (
            "Missing 'inputs' key: these signatures take scalar inputs (num_samples), so use "
            "the columnar format {\"signature_name\": ..., \"inputs\": {name: value}}."))
    signature_name = body.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise status_error("INVALID_ARGUMENT", "`signature_name` must be a string; received "
                                               f"a {type(signature_name).__name__}.")
    if not isinstance(body["inputs"], dict):
        raise status_error("INVALID_ARGUMENT", (
            "`inputs` must be an object {name: value} (the columnar format); received a "
            f"{type(body['inputs']).__name__}."))
    signature = servable.signature(signature_name)
    if any(key not in signature.inputs for key in body["inputs"]):  # before any is converted
        servable.check_names(signature, body["inputs"])
    inputs = {}
    for key, value in body["inputs"].items():
        info = signature.inputs.get(key)
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype if info else np.float32
        inputs[key] = _rest_tensor(key, value, dtype)
    return signature_name, inputs


def _json_output(value):
    """An output as JSON values; strings (the `info` signature's `config`) as text, as TF
    Serving writes them."""
    value = np.asarray(value)  # a session gives scalars as numpy or Python scalars
    if value.dtype.kind in "OS":
        return np.char.decode(value.astype(np.bytes_), "utf-8", errors="replace").tolist()
    return value.tolist()


def _parse_json(data):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise status_error("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None


class _RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST endpoints; every request gets a JSON answer. One request per
    connection (HTTP/1.0), which must arrive whole within the server's `request_timeout`."""

    def setup(self):
        self.timeout = self.server.request_timeout  # per read; the server's reaper per request
        super().setup()
        self.server.expect(self.connection)

    def finish(self):
        self.server.received(self.connection)
        super().finish()

    def send_error(self, code, message=None, explain=None):
        """What http.server refuses itself (a bad request line, another method, a too long
        header) is answered in JSON too."""
        if self.request_version == "HTTP/0.9":  # unparsed: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        error = message or self.responses.get(code, ("Error",))[0]
        self._send_json(code, {"error": f"{error}: {self.requestline[:200]!r}"})

    def _send_json(self, status, body):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone
            self.close_connection = True

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _handle(self, method):
        # What the request holds (its body's bytes in the budget, a worker slot) until its
        # answer is sent: an encoded answer and its client count against the slot too.
        with contextlib.ExitStack() as held:
            self._answer(method, held)

    def _answer(self, method, held):
        try:
            status, body = 200, self._route(method, held)
        except ServingError as e:
            status, body = HTTP_STATUS.get(e.code, 500), {"error": e.message}
            logger.warning("Refused a REST request (%s %.200r): %s", method, self.path,
                           e.headline)
        except TimeoutError:
            status, body = 408, {"error": (
                f"The request did not arrive within the server's request_timeout of "
                f"{self.server.request_timeout} s.")}
        except Exception as e:  # noqa: BLE001 (answered, and logged for the operator)
            request_id, message = internal_error(f"a REST request ({method} {self.path[:200]!r})",
                                                 e)
            status, body = 500, {"error": message, "request_id": request_id}
        if status != 200:
            self.close_connection = True  # the body may be unread
        self._send_json(status, body)
        if status == 500:  # after the exception and the frames it held are gone
            release_freed_memory()

    def _route(self, method, held):
        self._check_framing()
        match = _REST_PATH.match(self.path)
        if not match or (method == "POST") != (match["rest"] == ":predict"):
            raise status_error("NOT_FOUND", f"Malformed request: {method} {self.path}")
        version = int(match["version"]) if match["version"] is not None else None
        if method == "GET":
            self.server.received(self.connection)
        if method == "POST":
            data = self._read_body(held)
            # Parsing, answering and sending take memory; reading slowly does not.
            held.enter_context(self.server.slot())
            body = _parse_json(data)
            del data
            servable = self.server.registry.get(match["name"], version)
            signature_name, inputs = _rest_predict_request(servable, body)
            outputs = servable.run(signature_name, inputs, limits=self.server.limits,
                                   bytes_per_value=JSON_BYTES_PER_VALUE)
            return {"outputs": {k: _json_output(v) for k, v in outputs.items()}}
        servable = self.server.registry.get(match["name"], version)
        if match["rest"] == "/metadata":
            return {"model_spec": {"name": servable.name, "version": str(servable.version)},
                    "metadata": {"signature_def": {"signature_def": {
                        k: json_format.MessageToDict(v)
                        for k, v in servable.signatures.items()}}}}
        return {"model_version_status": [
            {"version": str(servable.version), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}

    def _check_framing(self):
        """INVALID_ARGUMENT for a request whose end is ambiguous (RFC 9112, section 6.3): with
        both Transfer-Encoding and Content-Length, or Content-Lengths that differ. A proxy in
        front of the server could read it as another request than the server does."""
        lengths = self.headers.get_all("Content-Length") or []
        if lengths and self.headers.get_all("Transfer-Encoding"):
            raise status_error("INVALID_ARGUMENT", (
                "The request has both Transfer-Encoding and Content-Length headers, which RFC "
                "9112 (section 6.3) forbids: send Content-Length alone."))
        if len({length.strip() for length in lengths}) > 1:
            raise status_error("INVALID_ARGUMENT", (
                f"The request has Content-Length headers that differ, {lengths[:4]}, which RFC "
                "9112 (section 6.3) forbids: send one."))

    def _read_body(self, held):
        limit = self.server.max_body_bytes
        length = self.headers.get("Content-Length")
        if length is None or not re.fullmatch(r"[0-9]+", length.strip()):
            raise status_error("INVALID_ARGUMENT", "A predict request needs a Content-Length "
                                                   f"header with its size; received {length!r}.")
        if int(length) > limit:
            raise status_error("RESOURCE_EXHAUSTED", (
                f"The body's Content-Length of {int(length)} bytes is above max_body_bytes = "
                f"{limit} (a limit of this server: `tfprobunet serve --max-body-bytes`; JSON "
                "takes about 34 times its size in memory once parsed)."))
        held.enter_context(self.server.body_bytes(int(length)))
        data = self.rfile.read(int(length))
        self.server.received(self.connection)
        if len(data) < int(length):
            raise TimeoutError  # the client closed, or the reaper did, before it all came
        return data


class _BusyHandler(_RestHandler):
    """The answer to a request beyond `rest_queue`: 503 with Retry-After, at once, after
    reading its head and dropping a small body (a connection closed with unread data is reset,
    and its client would never read the 503)."""

    def _handle(self, method):
        length = self.headers.get("Content-Length", "")
        if length.strip().isascii() and length.strip().isdigit():
            self._drain(int(length))
        self.close_connection = True
        logger.warning("Refused a REST request (%s %.200r): UNAVAILABLE: %d requests in flight "
                       "(rest_queue)", method, self.path, self.server.rest_queue)
        self._send_json(503, {"error": (
            f"The server is busy: {self.server.rest_queue} REST requests are in flight "
            "(rest_queue, `tfprobunet serve --rest-queue`); try again in "
            f"{RETRY_AFTER_SECONDS} s.")})

    def _drain(self, length):
        left = min(length, DRAINED_BYTES)
        try:
            while left > 0 and (chunk := self.rfile.read(min(left, 8192))):
                left -= len(chunk)
        except OSError:  # a timeout, or the client is gone: answer anyway
            pass


class RestServer(ThreadingHTTPServer):
    """The REST server: a thread per connection, at most `rest_queue` of them answering (the
    others answer 503 with Retry-After at once), a listen backlog of `rest_backlog`, and a
    reaper that closes the reading side of connections whose request has not arrived whole
    within `request_timeout` seconds (a per-read socket timeout alone lets a client that sends
    a byte now and then hold a thread forever)."""

    daemon_threads = True

    def __init__(self, address, registry, limits, max_body_bytes, request_timeout, rest_workers,
                 rest_queue=REST_QUEUE, rest_backlog=REST_BACKLOG):
        self.registry, self.limits = registry, limits
        self.rest_queue, self.request_queue_size = rest_queue, rest_backlog  # listen()'s
        self._in_flight = 0  # connections answered by a _RestHandler
        self._in_flight_lock = threading.Lock()
        self.max_body_bytes, self.request_timeout = max_body_bytes, request_timeout
        # Requests parsed, answered and sent at once: each may take about 1 GB at the default
        # limits.
        self.rest_workers = rest_workers
        self._slots = threading.BoundedSemaphore(rest_workers)
        self.body_budget = BODY_BUDGET * max_body_bytes
        self._body_bytes = 0  # of the bodies being read or waiting for a slot
        self._budget = threading.Condition()
        self._deadlines = {}  # connection -> when its request must have arrived
        self._deadlines_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, _RestHandler)
        threading.Thread(target=self._reap, daemon=True, name="rest-reaper").start()

    def process_request(self, request, client_address):
        """Answer the connection in a thread of its own: with `_RestHandler` if fewer than
        `rest_queue` are in flight, else with `_BusyHandler` (a 503 at once). The threads are
        daemons and are not joined at `server_close`."""
        with self._in_flight_lock:
            admitted = self._in_flight < self.rest_queue
            if admitted:
                self._in_flight += 1
        handler = _RestHandler if admitted else _BusyHandler
        try:
            threading.Thread(target=self._answer_connection, daemon=True,
                             args=(request, client_address, handler, admitted)).start()
        except BaseException:  # no thread: serve_forever closes the connection
            self._leave(admitted)
            raise

    def _leave(self, admitted):
        if admitted:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _answer_connection(self, request, client_address, handler, admitted):
        try:
            handler(request, client_address, self)
        except Exception:  # noqa: BLE001 (socketserver's own handling: printed, not raised)
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._leave(admitted)

    @contextlib.contextmanager
    def slot(self):
        """One of the `rest_workers` slots for parsing, answering and sending the answer of a
        request whose body has arrived; UNAVAILABLE (503) if none frees up within
        `request_timeout` seconds."""
        if not self._slots.acquire(timeout=self.request_timeout):
            raise status_error("UNAVAILABLE", (
                f"The server is busy: {self.rest_workers} REST requests are being answered "
                f"(rest_workers, `tfprobunet serve --rest-workers`) and none finished within "
                f"{self.request_timeout} s; try again."))
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def body_bytes(self, size):
        """`size` bytes of the `body_budget` for a body about to be read; UNAVAILABLE (503) if
        they do not free up within `request_timeout` seconds."""
        deadline = time.monotonic() + self.request_timeout
        with self._budget:
            while self._body_bytes + size > self.body_budget:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._budget.wait(remaining):
                    raise status_error("UNAVAILABLE", (
                        f"The server is busy: {self._body_bytes} bytes of request bodies are "
                        f"being read or waiting to be answered, and this one's {size} would "
                        f"exceed {BODY_BUDGET} x max_body_bytes = {self.body_budget} "
                        "(`tfprobunet serve --max-body-bytes`); try again."))
            self._body_bytes += size
        try:
            yield
        finally:
            with self._budget:
                self._body_bytes -= size
                self._budget.notify_all()

    def expect(self, connection):
        with self._deadlines_lock:
            self._deadlines[connection] = time.monotonic() + self.request_timeout

    def received(self, connection):
        with self._deadlines_lock:
            self._deadlines.pop(connection, None)

    def _reap(self):
        while not self._closed.wait(min(0.25, self.request_timeout / 4)):
            now = time.monotonic()
            with self._deadlines_lock:
                late = [c for c, deadline in self._deadlines.items() if deadline < now]
                for connection in late:
                    del self._deadlines[connection]
            for connection in late:
                try:  # a blocked read returns: the handler answers 408 or drops the connection
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def server_close(self):
        self._closed.set()
        super().server_close()
