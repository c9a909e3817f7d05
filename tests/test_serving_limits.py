"""Serving limits that count what a request costs (issue 40): the class count in the sample-byte
limit, requests whose repeated fields are counted before they are read, the memory a refused
request leaves behind, bounded queues that answer 503 or RESOURCE_EXHAUSTED at once under
load, and internal errors answered with a request id instead of their text."""

import http.client
import json
import logging
import re
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from tfprobunet import defaults, serving
from tfprobunet.serving import export
from tfprobunet.serving.local_server import Servable
from conftest import (SERVED, raw_request, serve_process, served_images, served_model,
                      status_mb, tiny_model)

K, C, N, F = (SERVED[k] for k in "KCNF")
# A model with 255 classes: a sample costs 255 times the bytes of a pixel.
MANY = 255


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """`pun`, the served test model (K = 3), and `many`, a tiny model of 255 classes."""
    base = str(tmp_path_factory.mktemp("saved_models"))
    export.export_for_serving(served_model(3), base, "pun")
    many = tiny_model(MANY, num_channels=[8, 16], latent_dim=N)
    many.build((None, 16, 16, C))
    export.export_for_serving(many, base, "many")
    return base


def _stub(port):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _refused(stub, request, code=grpc.StatusCode.INVALID_ARGUMENT):
    """The details of `request`'s refusal with `code`."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=120)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def _post(port, body, path="/v1/models/pun:predict"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", path, json.dumps(body))
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def _oversized(samples=40):
    """`serving_default` on one 128x128 image of the 255-class model: 40 samples pass the
    sample and pixel limits (655,360 sample pixels) but take 1 x 40 x 128 x 128 x 255 x 4 =
    668,467,200 bytes of probabilities, above the default 2**29."""
    return {"images": np.full((1, 128, 128, C), 0.5, np.float32),
            "num_samples": np.int32(samples), "seed": np.int32([1, 2])}


def test_the_sample_byte_limit_counts_the_classes(base):
    """For a 255-class model, samples that pass every pixel limit took gigabytes: the server
    refuses them before anything runs, naming the numbers and the flag, over gRPC and REST."""
    assert defaults.sample_bytes(1, 40, 128, 128, MANY) == 668_467_200 > defaults.MAX_SAMPLE_BYTES
    message = ("40 samples of 1 image(s) of 128 x 128 pixels with 255 classes take 637.5 MiB as "
               "float32 probabilities (b*m*h*w*K*4 bytes), above the limit of 512.0 MiB: ask "
               "for at most 32 samples of 1 image(s) (per request; max_sample_bytes is a limit "
               "of this server")
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as running:
        channel, stub = _stub(running.port)
        for output_filter in ([], ["masks"]):  # masks alone cost the probabilities too
            details = _refused(stub, raw_request("serving_default", _oversized(), output_filter,
                                                 model="many"))
            assert message in details and "tfprobunet serve --max-sample-bytes" in details
        status, answer = _post(running.rest_port, {"inputs": {
            k: v.tolist() for k, v in _oversized().items()}}, "/v1/models/many:predict")
        assert status == 400 and message in answer["error"], answer
        # The same request with 32 samples (534,773,760 bytes) is within the limit; it is
        # not run here (half a gigabyte), but one image of 16x16 with 32 samples is.
        masks = serving.GrpcClient(f"127.0.0.1:{running.port}", "many").predict(
            served_images(batch=1), 32, seed=[1, 2], output_filter=["masks"])["masks"]
        assert masks.shape == (1, 32, 16, 16) and masks.max() < MANY
        channel.close()


def test_the_sample_byte_limit_of_the_server_is_exact(base):
    """At a lowered limit, hand-worked: 2 images of 16x16, 3 classes, 3 samples take
    4 x 2 x 3 x 16 x 16 x 3 = 18,432 bytes and pass; 4 samples (24,576) are refused, in
    `serving_default`, in `sample` and in `decode` (the samples of `z`)."""
    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0,
                             max_sample_bytes=18_432) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        images = served_images()
        assert client.predict(images, 3, seed=[1, 2])["masks"].shape == (2, 3, 16, 16)
        features = client.features(images)
        message = ("4 samples of 2 image(s) of 16 x 16 pixels with 3 classes take 24.0 KiB as "
                   "float32 probabilities (b*m*h*w*K*4 bytes), above the limit of 18.0 KiB: ask "
                   "for at most 3 samples of 2 image(s) or at most 1 image(s) of 4 samples")
        for ask in (lambda: client.predict(images, 4, seed=[1, 2]),
                    lambda: client.sample(features, 4, seed=[1, 2]),
                    lambda: client.decode(features, np.zeros((2, 4, N), np.float32))):
            with pytest.raises(serving.InvalidRequestError) as caught:
                ask()
            assert message in caught.value.message, caught.value.message


def test_repeated_fields_are_counted_before_they_are_read(base):
    """A 63 MB request naming `masks` 9 million times in `output_filter` ran 280 s and took the
    server to 5.9 GB: a request's fields are counted before it is parsed (at most 1024 at all
    levels), and the names, dimensions and values it repeats before they are read, each
    refused in one line."""
    from tfprobunet.serving.local_server.grpc_service import MAX_REQUEST_FIELDS

    too_many = (f"The request holds more than {MAX_REQUEST_FIELDS} fields (inputs, dimensions, "
                "output_filter or metadata_field names, values sent one by one), counted before "
                "it is parsed")
    images = served_images(batch=1)
    good = {"images": images, "num_samples": np.int32(2), "seed": np.int32([1, 2])}
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as running:
        channel, stub = _stub(running.port)
        # Beyond the field count: refused unparsed.
        many_inputs = raw_request("features", {"images": images})
        for i in range(100_000):
            many_inputs.inputs[f"x{i:06d}"].dtype = tf.float32.as_datatype_enum
        deep = raw_request("features", {"images": images})
        for _ in range(100_000):
            deep.inputs["images"].tensor_shape.dim.add().size = 1
        for request in (raw_request("serving_default", good, ["masks"] * 9_000_000),
                        many_inputs, deep):
            assert _refused(stub, request).startswith(too_many)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata.model_spec.name = "pun"
        metadata.metadata_field.extend(["signature_def"] * 1_000_000)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelMetadata(metadata, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(too_many)
        # Within it: what the signature does not take, named in one line.
        details = _refused(stub, raw_request("serving_default", good, ["masks"] * 3))
        assert details == ("output_filter names 3 outputs; this signature has 2, "
                           "{masks,probabilities}: name each at most once."), details
        details = _refused(stub, raw_request("serving_default", good, ["masks", "masks"]))
        assert details == "duplicate output tensor alias: masks"
        details = _refused(stub, raw_request("serving_default", good, ["mask"]))
        assert "output tensor alias not found in signature: mask" in details
        extra = raw_request("features", {"images": images})
        for i in range(100):
            extra.inputs[f"x{i:03d}"].dtype = tf.float32.as_datatype_enum
        details = _refused(stub, extra)
        assert details.startswith("input size does not match signature: 101!=1"), details
        assert re.search(r"Sent extra: \{(x\d{3},){19}x\d{3}\}\.", details), details
        ranked = raw_request("features", {"images": images})
        for _ in range(16):
            ranked.inputs["images"].tensor_shape.dim.add().size = 1
        assert "Input `images` claims 20 dimensions" in _refused(stub, ranked)
        stuffed = raw_request("serving_default", good)
        stuffed.inputs["num_samples"].int_val.extend([2] * 1_000_000)  # packed: one field
        details = _refused(stub, stuffed)
        assert details == ("Input `num_samples` holds 1000001 values in int_val, more than its "
                           "shape [] of int32 takes (1)."), details
        padded = raw_request("features", {"images": images})
        padded.inputs["images"].tensor_content += b"\0" * 2**20
        details = _refused(stub, padded)
        assert f"holds {1024 + 2**20} bytes of tensor_content" in details, details
        # REST: names that are not the signature's are refused before any value is converted.
        status, answer = _post(running.rest_port, {"signature_name": "features", "inputs": {
            "images": images.tolist(), **{f"x{i}": [0.0] * 1000 for i in range(1000)}}})
        assert status == 400 and "input size does not match signature: 1001!=1" in \
            answer["error"], answer
        # Each output named once, in any order, is answered.
        answer = stub.Predict(raw_request("serving_default", good, ["probabilities", "masks"]),
                              timeout=60)
        assert sorted(answer.outputs) == ["masks", "probabilities"]
        channel.close()


def test_the_response_limit_sums_the_outputs_asked_for(base):
    """`features` of one 16x16 image answers 16 x 16 x F + 2 x N values, 4 bytes each: with
    the message limit at exactly that plus the overhead, all three pass and two of them
    (`prior_loc` and `prior_scale`) alone do too, and one value less refuses all three."""
    from tfprobunet.serving.local_server import RESPONSE_OVERHEAD

    values = 16 * 16 * F + 2 * N
    images = served_images(batch=1)
    for limit, refused in ((4 * values + RESPONSE_OVERHEAD, False),
                           (4 * values + RESPONSE_OVERHEAD - 4, True)):
        with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0,
                                 max_message_bytes=limit) as running, \
                serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
            if refused:
                with pytest.raises(serving.ServingError) as caught:
                    client.features(images)
                assert caught.value.code == "RESOURCE_EXHAUSTED", caught.value
            else:
                assert client.features(images)["features"].shape == (1, 16, 16, F)
            channel, stub = _stub(running.port)
            answer = stub.Predict(raw_request("features", {"images": images},
                                              ["prior_loc", "prior_scale"]), timeout=60)
            assert sorted(answer.outputs) == ["prior_loc", "prior_scale"]
            channel.close()


@pytest.mark.slow
def test_refused_requests_leave_the_servers_memory_as_it_was(base):
    """Over gRPC, 1000 samples of a 128x128 image for 255 classes took the server from 1.0 to
    5.8 GB, and it kept them. 20 refused oversized requests (samples too costly, a 63 MB
    request naming `masks` 9 million times, a million values for one) now leave its resident
    memory within 10 % of what it was after a valid request (the 63 MB ones alone left +27 %
    in the heap's free lists until the server gave freed memory back)."""
    with serve_process(base) as (process, port, _):
        channel, stub = _stub(port)
        good = {"images": np.full((1, 128, 128, C), 0.5, np.float32),
                "num_samples": np.int32(2), "seed": np.int32([1, 2])}
        stub.Predict(raw_request("serving_default", good, ["masks"], model="many"), timeout=120)
        before = status_mb(process.pid, "VmRSS")
        stuffed = raw_request("serving_default", good, model="many")
        stuffed.inputs["num_samples"].int_val.extend([2] * 1_000_000)
        requests = [raw_request("serving_default", _oversized(), model="many"),
                    raw_request("serving_default", _oversized(1000), ["masks"], model="many"),
                    raw_request("serving_default", good, ["masks"] * 9_000_000, model="many"),
                    stuffed]
        for i in range(20):
            _refused(stub, requests[i % len(requests)])
        after = status_mb(process.pid, "VmRSS")
        assert after <= 1.1 * before, f"resident memory {before:.0f} MB -> {after:.0f} MB"
        answer = stub.Predict(raw_request("serving_default", good, ["masks"], model="many"),
                              timeout=120)
        assert tf.make_ndarray(answer.outputs["masks"]).shape == (1, 2, 128, 128)
        channel.close()


class _Held(Servable):
    """A version whose runs wait until `release` is set: requests in flight for as long as a
    test needs (the load a queue bounds), each counted in `entered` as it starts."""

    def __init__(self, *args):
        super().__init__(*args)
        self.release, self.entered = threading.Event(), threading.Semaphore(0)

    def run(self, *args, **kwargs):
        self.entered.release()
        assert self.release.wait(120), "never released"
        return super().run(*args, **kwargs)


def _raw_post(port, body, results):
    """POST `body` (bytes) on a new connection; append `(status, headers, payload)`, or the
    exception it ended with, to `results`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        results.append((int(lines[0].split()[1]), headers, json.loads(payload)))
    except Exception as e:  # noqa: BLE001 (a reset is what the test looks for)
        results.append(e)


def _wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_rest_answers_200_or_503_to_200_concurrent_clients(base):
    """At 200 concurrent REST clients 17 % of requests were reset (a listen backlog of 5).
    With one worker busy, `rest_queue=16` requests are in flight (one running, 15 waiting) and
    the other 184 get 503 with Retry-After at once; once the worker frees up the 16 are
    answered. No connection is reset."""
    path = f"{base}/pun/1"
    body = json.dumps({"signature_name": "features", "inputs": {
        "images": served_images(batch=1).tolist()}}).encode()
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0, rest_workers=1,
                             rest_queue=16, request_timeout=120) as running:
        held = _Held("pun", 1, path)
        running.registry.serve(held)
        assert running._http.request_queue_size >= 128
        results = []
        clients = [threading.Thread(target=_raw_post, args=(running.rest_port, body, results))
                   for _ in range(200)]
        for client in clients:
            client.start()
        _wait_for(lambda: len(results) >= 184)
        assert held.entered.acquire(timeout=60)  # the one running
        held.release.set()
        for client in clients:
            client.join(120)
    resets = [r for r in results if isinstance(r, Exception)]
    assert not resets, resets[:3]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 16 + [503] * 184, statuses
    for status, headers, answer in results:
        if status == 503:
            assert headers["Retry-After"] == "1" and "rest_queue" in answer["error"], answer
        else:
            assert np.shape(answer["outputs"]["features"]) == (1, 16, 16, F)


def test_grpc_calls_beyond_the_queue_are_resource_exhausted(base):
    """grpc's `maximum_concurrent_rpcs`: with 2 calls in flight, a third is answered
    RESOURCE_EXHAUSTED at once; the two are answered once they run."""
    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0, max_workers=2,
                             grpc_queue=2) as running:
        held = _Held("pun", 1, f"{base}/pun/1")
        running.registry.serve(held)
        channel, stub = _stub(running.port)
        request = raw_request("features", {"images": served_images(batch=1)})
        calls = [stub.Predict.future(request, timeout=120) for _ in range(2)]
        for _ in calls:
            assert held.entered.acquire(timeout=60)
        _refused(stub, request, grpc.StatusCode.RESOURCE_EXHAUSTED)
        held.release.set()
        for call in calls:
            assert tf.make_ndarray(call.result().outputs["features"]).shape == (1, 16, 16, F)
        channel.close()


class _BrokenSession:
    """A TF session whose runs raise `error` (what a session raises when memory runs out, or
    a TensorFlow error that is not a check of ours); it closes the real one."""

    def __init__(self, session, error):
        self.session, self.error = session, error

    def run(self, *args, **kwargs):
        raise self.error

    def close(self):
        self.session.close()


SECRET = "/srv/models/secret"


@pytest.mark.parametrize("error", [
    MemoryError(f"Unable to allocate 6.3 GiB for an array at {SECRET}"),
    tf.errors.UnknownError(None, None, f"MemoryError: std::bad_alloc in {SECRET}")],
    ids=["MemoryError", "UnknownError"])
def test_internal_errors_answer_a_request_id_and_log_the_text(base, caplog, error):
    """REST once answered 500 `Internal error: MemoryError: ...`, gRPC `INTERNAL: MemoryError:
    ...`: the answer names a request id, the server's log has the exception's text on one line
    under that id."""
    caplog.set_level(logging.INFO, "tfprobunet.serving")
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as running:
        broken = Servable("pun", 1, f"{base}/pun/1")
        broken.session = _BrokenSession(broken.session, error)
        running.registry.serve(broken)
        status, answer = _post(running.rest_port, {"signature_name": "features", "inputs": {
            "images": served_images(batch=1).tolist()}})
        channel, stub = _stub(running.port)
        details = _refused(stub, raw_request("features", {"images": served_images(batch=1)}),
                           grpc.StatusCode.INTERNAL)
        channel.close()
    assert status == 500, answer
    for message in (answer["error"], details):
        assert "MemoryError" not in message and SECRET not in message, message
        assert re.fullmatch(r"Internal error \(request id [0-9a-f]{16}\): the server could not "
                            r"answer this request; its log names the cause under this id\.",
                            message), message
    ids = [answer["request_id"], re.search("[0-9a-f]{16}", details)[0]]
    assert re.search("[0-9a-f]{16}", answer["error"])[0] == ids[0] != ids[1]
    for request_id in ids:
        lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0], lines
        assert "MemoryError" in lines[0] and SECRET in lines[0], lines


def test_the_cli_defaults_of_the_queues_are_the_servers():
    """`tfprobunet serve` shows its defaults without importing TensorFlow: they must be
    `ModelServer`'s."""
    import inspect

    from tfprobunet.cli import serving as cli_serving

    parameters = inspect.signature(serving.ModelServer).parameters
    assert (cli_serving.REST_QUEUE, cli_serving.REST_BACKLOG, cli_serving.GRPC_QUEUE) == tuple(
        parameters[k].default for k in ("rest_queue", "rest_backlog", "grpc_queue"))
