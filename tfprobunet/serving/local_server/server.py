"""`ModelServer`: the local stand-in for `tensorflow_model_server`, the gRPC and REST services on
one `Registry`, which a thread scans for new versions every `poll_seconds`."""

import errno
import logging
import os
import socket
import threading
from concurrent import futures

from tfprobunet.defaults import (GRPC_QUEUE, MAX_BODY_BYTES, MAX_MESSAGE_BYTES, MAX_PIXELS,
                                 MAX_SAMPLE_BYTES, MAX_SAMPLE_PIXELS, MAX_SAMPLES, REST_BACKLOG,
                                 REST_QUEUE, check_number)
from tfprobunet.serving.local_server.grpc_service import (BoundedParsing, ModelServicer,
                                                          PredictionServicer)
from tfprobunet.serving.local_server.limits import RequestLimits
from tfprobunet.serving.local_server.registry import Registry
from tfprobunet.serving.local_server.rest_service import RestServer
from tfprobunet.serving.wire import grpc_options, require_serving_extra

try:  # the `serving` extra
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
except ImportError:
    grpc = None

logger = logging.getLogger("tfprobunet.serving")


def _in_use(host, port, flag):
    return OSError(errno.EADDRINUSE, f"port {port} of {host} is in use (another server listens "
                                     f"there): stop that server, or choose another {flag}")


def _check_port_free(host, port, flag):
    """Raise `OSError` naming `port` and `flag` when a server listens on `host:port` (0: any free
    port, not checked). gRPC would otherwise share the port with it (SO_REUSEPORT) and the
    kernel spread new connections over both servers."""
    if not port:
        return
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return  # the server's own bind names the host
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise _in_use(host, port, flag) from None
            raise


class ModelServer:
    """A local TF Serving stand-in: gRPC on `port`, REST on `rest_port` (0: a free port; None:
    no REST). The base path is scanned every `poll_seconds` for new versions, as TF Serving does.

    Args:
        base_path: the model base folder, holding `<name>/<version>/`.
        port, rest_port, host: where to listen. A port another server holds is refused
            (`OSError` naming it), not shared with that server.
        max_workers: gRPC requests answered at once (TF Serving: `--grpc_max_threads`); more
            wait. Each may take about 1 GB at the default limits.
        rest_workers: REST requests parsed, answered and sent at once (TF Serving:
            `--rest_api_num_threads`); more wait up to `request_timeout`, then get 503. The
            bodies being read or waiting total at most `BODY_BUDGET` x `max_body_bytes`.
        poll_seconds: seconds between scans (TF Serving: `--file_system_poll_wait_seconds`);
            0 scans only when a request names an unknown model.
        max_samples, max_pixels, max_sample_pixels, max_sample_bytes: per-request limits
            (`RequestLimits`), on top of those each export records; the defaults are the
            export's.
        max_message_bytes: the largest gRPC message, both ways, and REST response (default
            256 MiB; TF Serving: `--grpc_channel_arguments=grpc.max_receive_message_length=...`).
        max_body_bytes: the largest REST request body (default 32 MiB: parsed JSON takes about
            34 times its size in memory).
        request_timeout: seconds a REST client may take to send its whole request (TF
            Serving: `--rest_api_timeout_in_ms`).
        rest_queue: REST requests in flight (being read, waiting for a worker or answered);
            more are answered 503 with `Retry-After` at once, instead of waiting.
        rest_backlog: connections the kernel queues before the REST server accepts them (its
            `listen` backlog; the kernel caps it at `net.core.somaxconn`).
        grpc_queue: gRPC calls in flight (answered or waiting for a worker); more are answered
            RESOURCE_EXHAUSTED at once (grpc's `maximum_concurrent_rpcs`).

    Example:

    ```python
    with ModelServer("saved_models", port=0, rest_port=0) as server:
        client = GrpcClient(f"localhost:{server.port}", "probunet")
        masks = client.predict(images, 16)["masks"]
    ```
    """

    def __init__(self, base_path, port=8500, rest_port=8501, host="127.0.0.1", max_workers=4,
                 rest_workers=2, poll_seconds=1.0, max_samples=MAX_SAMPLES, max_pixels=MAX_PIXELS,
                 max_sample_pixels=MAX_SAMPLE_PIXELS, max_message_bytes=MAX_MESSAGE_BYTES,
                 max_body_bytes=MAX_BODY_BYTES, request_timeout=30.0,
                 max_sample_bytes=MAX_SAMPLE_BYTES, rest_queue=REST_QUEUE,
                 rest_backlog=REST_BACKLOG, grpc_queue=GRPC_QUEUE):
        require_serving_extra()
        if not os.path.isdir(base_path):
            raise FileNotFoundError(f"No model base path {base_path!r}: export a model there "
                                    "first (`tfprobunet export`).")
        for name, value in (("rest_queue", rest_queue), ("rest_backlog", rest_backlog),
                            ("grpc_queue", grpc_queue)):
            check_number(name, value, minimum=1, integer=True)
        self.limits = RequestLimits(max_samples, max_pixels, max_sample_pixels,
                                    max_message_bytes, max_sample_bytes)
        _check_port_free(host, port, "--port")
        if rest_port is not None:
            _check_port_free(host, rest_port, "--rest-port")
        self.registry = Registry(base_path)
        self.registry.reload()
        # Without SO_REUSEPORT: a port another server took meanwhile fails to bind, unshared.
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                 options=[*grpc_options(max_message_bytes),
                                          ("grpc.so_reuseport", 0)],
                                 maximum_concurrent_rpcs=grpc_queue)
        prediction = PredictionServicer(self.registry, self.limits)
        model = ModelServicer(self.registry)
        # First: requests are counted before they are parsed.
        self._grpc.add_generic_rpc_handlers((BoundedParsing(prediction, model),))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction,
                                                                            self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, self._grpc)
        try:
            self.port = self._grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            _check_port_free(host, port, "--port")  # taken since the first check: names it
            raise
        self.host, self.poll_seconds = host, poll_seconds
        self._stopped = threading.Event()
        self._poller = None
        self._http = None
        self.rest_port = None
        if rest_port is not None:
            try:
                self._http = RestServer((host, rest_port), self.registry, self.limits,
                                         max_body_bytes, request_timeout, rest_workers,
                                         rest_queue, rest_backlog)
            except OSError as error:
                self._grpc.stop(grace=None)
                if error.errno == errno.EADDRINUSE:
                    raise _in_use(host, rest_port, "--rest-port") from None
                raise
            self.rest_port = self._http.server_address[1]

    def _poll(self):
        # Like TF Serving's --file_system_poll_wait_seconds: new versions are picked up. The
        # loop never ends on an error: it is logged and the next scan runs.
        while not self._stopped.wait(self.poll_seconds):
            try:
                self.registry.reload()
            except Exception:  # noqa: BLE001
                logger.exception("Scanning %s failed", self.registry.base_path)

    def start(self):
        self._grpc.start()
        if self.poll_seconds:
            self._poller = threading.Thread(target=self._poll, daemon=True, name="model-poll")
            self._poller.start()
        if self._http is not None:
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self._stopped.set()
        self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._poller is not None:
            # Its scan may be loading a version: closed after it, not killed mid-load at exit
            # (TensorFlow aborts the process then) nor served after `close`.
            self._poller.join()
        self.registry.close()

    def wait(self):
        """Block until interrupted (for `tfprobunet serve`)."""
        self._grpc.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
