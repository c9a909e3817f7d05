"""The local TF Serving stand-in against a hostile client: request limits with the server's memory
measured, a reload loop that survives broken versions, REST that answers every malformed body
with a JSON 4xx, read timeouts, and a bounded mixed load with bad requests among good ones."""

import http.client
import json
import logging
import os
import shutil
import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tfprobunet import serving
from tfprobunet.serving import export
from conftest import (SERVED, raw_request, serve_process, served_images, served_model,
                      status_mb)

K, C, N, F = (SERVED[k] for k in "KCNF")


def _claiming(value, shape):
    """A TensorProto of one value that claims `shape` (parsing fills it out to the shape)."""
    proto = tf.make_tensor_proto(value)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def _peak_rss_mb(pid):
    """The process's peak resident memory (VmHWM), in MB."""
    return status_mb(pid, "VmHWM")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("saved_models"))
    export.export_for_serving(served_model(3), base, "pun")
    return base


@pytest.mark.slow
def test_huge_requests_are_refused_before_memory_is_spent(base):
    """`num_samples=100000` and a 4096x4096 image once took the server past 6 GB:
    each is now refused, naming the limit, and the server's peak memory barely moves."""
    # One gRPC worker: each worker thread's malloc arena may keep one request's bytes for the
    # next (with 4, a fresh-clone run measured 174 MB kept after five 64 MB refusals).
    with serve_process(base, "--workers", "1") as (process, port, rest_port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        images = served_images(batch=1)
        good = {"images": images, "num_samples": np.int32(4), "seed": np.int32([1, 2])}
        stub.Predict(raw_request("serving_default", good), timeout=60)  # warm
        before = _peak_rss_mb(process.pid)
        # A few hundred bytes claiming huge tensors (one value, filled out to the shape when
        # parsed): refused from the shapes and dtypes alone, before anything is allocated. Each
        # would take 256 MB to 1 GB if filled out, so the peak may not move by half of that.
        bombs = [("features", {"images": _claiming(np.float32(1), [1, 8192, 8192, 1])},
                  "max_pixels"),
                 ("features", {"images": images,
                               **{f"x{i}": _claiming(np.complex128(1), [2**26])
                                  for i in range(3)}}, "Sent extra"),
                 ("serving_default", {**good, "num_samples": _claiming(np.int32(1), [2**26])},
                  "`num_samples` has shape"),
                 ("decode", {"features": np.zeros((1, 16, 16, F), np.float32),
                             "z": _claiming(np.float32(0), [2**25 - 4096, 1, 2])},
                  "same batch size")]
        for signature, inputs, text in bombs:
            request = raw_request(signature, {})
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto if isinstance(proto, tensor_pb2.TensorProto)
                                             else tf.make_tensor_proto(proto))
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert text in caught.value.details(), caught.value.details()
        grown = _peak_rss_mb(process.pid) - before
        assert grown < 128, f"refusing the claimed tensors raised the peak by {grown:.0f} MB"
        # Requests that are big on the wire (16 and 64 MB) are refused from their shapes. Their
        # bytes pass through gRPC and protobuf (a few copies each, in whichever worker thread's
        # malloc arena), so the peak moves, but by far less than the 6 GB of the old code; and
        # they are not kept alive: after the first two 64 MB requests, 10 more leave resident
        # memory within four requests' size of where it was (10 kept alive would be 640 MB;
        # what the allocator keeps for the next ones moves with the load: 1 to 24 MB quiet,
        # 165 MB once in a full run at load 3).
        cases = [
            ("serving_default", {**good, "num_samples": np.int32(100000)},
             grpc.StatusCode.INVALID_ARGUMENT, "max_samples"),
            ("features", {"images": np.zeros((1, 2048, 2048, C), np.float32)},
             grpc.StatusCode.INVALID_ARGUMENT, "max_pixels"),
            ("features", {"images": np.zeros((1, 4096, 4096, C), np.float32)},
             grpc.StatusCode.INVALID_ARGUMENT, "max_pixels"),
        ]
        for signature, inputs, code, limit in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(raw_request(signature, inputs), timeout=60)
            assert caught.value.code() == code, (signature, caught.value.details())
            assert limit in caught.value.details(), caught.value.details()
        big = raw_request("features", {"images": np.zeros((1, 4096, 4096, C), np.float32)})
        for repeat in range(12):
            if repeat == 2:
                resident = status_mb(process.pid, "VmRSS")
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(big, timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        kept = status_mb(process.pid, "VmRSS") - resident
        assert kept < 4 * big.ByteSize() / 2**20, f"10 refusals kept {kept:.0f} MB resident"
        # Over REST too: the sample count, and a body over the size limit (413).
        connection = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=60)
        body = json.dumps({"signature_name": "serving_default", "inputs": {
            "images": images.tolist(), "num_samples": 100000, "seed": [1, 2]}})
        connection.request("POST", "/v1/models/pun:predict", body)
        response = connection.getresponse()
        assert response.status == 400 and "max_samples" in json.loads(response.read())["error"]
        connection.close()
        grown = _peak_rss_mb(process.pid) - before
        assert grown < 1500, f"the server's peak memory grew by {grown:.0f} MB"
        # And it keeps serving.
        answer = stub.Predict(raw_request("serving_default", good), timeout=60)
        assert tf.make_ndarray(answer.outputs["masks"]).shape == (1, 4, 16, 16)
        channel.close()


def test_messages_and_responses_beyond_the_size_limit_are_resource_exhausted(base):
    """gRPC messages are bounded (TF Serving: --grpc_channel_arguments), and a response that
    would exceed the bound is refused before it is computed, naming `output_filter`."""
    with serving.ModelServer(base, port=0, rest_port=0, max_message_bytes=2**20) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        with pytest.raises(serving.ServingError) as caught:
            client.features(np.zeros((1, 512, 512, C), np.float32))  # a 1 MB request
        assert caught.value.code == "RESOURCE_EXHAUSTED", caught.value
        # 2 x 300 x 16 x 16 masks (int32) and 3-class probabilities: 2.5 MB; masks alone 0.6 MB.
        with pytest.raises(serving.ServingError) as caught:
            client.predict(served_images(), 300)
        assert caught.value.code == "RESOURCE_EXHAUSTED", caught.value
        assert "max_message_bytes" in caught.value.message
        assert "output_filter" in caught.value.message
        masks = client.predict(served_images(), 300, output_filter=["masks"])["masks"]
        assert masks.shape == (2, 300, 16, 16)
        status, answer = _post(running.rest_port, {"signature_name": "serving_default", "inputs": {
            "images": served_images().tolist(), "num_samples": 300, "seed": [1, 2]}})
        assert status == 413 and "max_message_bytes" in answer["error"], answer


DATA_SHARD = os.path.join("variables", "variables.data-00000-of-00001")


def _break(version_dir):
    """What a copy that died halfway through the weights leaves: every file, the variables'
    data cut short. It fails to load."""
    data = os.path.join(version_dir, DATA_SHARD)
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)


def _place_broken(source, target):
    """A broken copy of the version folder `source` at `target`, made beside it and renamed in:
    a poll sees it whole and broken, never half-copied."""
    staging = f"{os.path.dirname(target)}.staging"
    shutil.copytree(source, staging)
    _break(staging)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(staging, target)


def _wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_broken_version_is_skipped_and_a_later_good_one_served(tmp_path, caplog):
    """New versions are picked up by polling; one that fails to load is logged once and skipped
    while the previous one keeps serving, and the poll goes on. Everything is waited for as a
    condition (a log line, the version served), never a fixed time: under load, polls and
    loads take their time."""
    base = str(tmp_path)
    first, third = served_model(1), served_model(2)
    export.export_for_serving(first, base, "pun")
    images = served_images(seed=5)

    def expected(model):
        return tf.nn.softmax(model.sample(images, 2, seed=tf.constant([3, 3]))).numpy()

    def logged(path):
        return [r.getMessage() for r in caplog.records if path in r.getMessage()]

    caplog.set_level(logging.WARNING)
    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0.1) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        broken = os.path.join(base, "pun", "2")
        _place_broken(os.path.join(base, "pun", "1"), broken)
        _wait_for(lambda: logged(broken))
        # Version 1 keeps serving.
        np.testing.assert_allclose(client.predict(images, 2, seed=[3, 3])["probabilities"],
                                   expected(first), atol=1e-5)
        # A model whose only version is broken is NOT_FOUND, and does not affect the others.
        _place_broken(broken, os.path.join(base, "bad", "1"))
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "bad") as bad:
            for _ in range(3):
                with pytest.raises(serving.ServingError) as caught:
                    bad.features(images)
                assert caught.value.code == "NOT_FOUND", caught.value
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "nope") as nope:
            with pytest.raises(serving.ServingError) as caught:
                nope.features(images)
        assert caught.value.code == "NOT_FOUND"
        # The poll thread is alive: a later good version is served.
        export.export_for_serving(third, base, "pun", version=3)
        _wait_for(lambda: running.registry.versions("pun") == [3])
        np.testing.assert_allclose(client.predict(images, 2, seed=[3, 3])["probabilities"],
                                   expected(third), atol=1e-5)
        with pytest.raises(serving.ServingError, match=r"Specific\(pun, 1\)"):
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun", version=1).features(images)
        # Many polls later, each broken folder was logged once, with its path, not every poll.
        assert len(logged(broken)) == 1, logged(broken)
        assert len(logged(os.path.join(base, "bad", "1"))) == 1
        # A broken folder that changes (copied again, in place, file by file) is tried again
        # once the copy is complete: no failure of a half-copied folder is logged.
        shutil.rmtree(os.path.join(base, "bad", "1"))
        shutil.copytree(os.path.join(base, "pun", "1"), os.path.join(base, "bad", "1"))
        _wait_for(lambda: running.registry.versions("bad") == [1])
        assert len(logged(os.path.join(base, "bad", "1"))) == 1


def _files(folder):
    """The files under `folder`, relative to it."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder)
                  for parent, _, names in os.walk(folder) for name in names)


def test_a_version_copied_file_by_file_is_loaded_once_complete(tmp_path, caplog):
    """TF Serving users copy versions in non-atomically: a folder being copied must not be
    loaded, and its failure not logged, before it is complete, whether `saved_model.pb` comes
    last or first (then the variables are missing). A data file cut short, which the loader
    alone can tell, is logged once and tried again when it changes. The registry is scanned
    after each file, as a poll between two files of a slow copy would."""
    base = str(tmp_path / "models")
    export.export_for_serving(served_model(1), base, "pun")
    source = export.export_for_serving(served_model(2), str(tmp_path / "source"), "pun")
    registry = serving.local_server.Registry(base)
    registry.reload()
    assert registry.versions("pun") == [1]
    caplog.set_level(logging.WARNING)
    files = _files(source)
    orders = {2: [f for f in files if f != "saved_model.pb"] + ["saved_model.pb"],
              3: ["saved_model.pb"] + [f for f in files if f not in ("saved_model.pb",
                                                                     DATA_SHARD)]}
    for version, order in orders.items():
        target = os.path.join(base, "pun", str(version))
        for name in order:
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))
            registry.reload()
            if name != order[-1] or version == 3:
                assert registry.versions("pun") == [version - 1], (version, name)
        failures = [r.getMessage() for r in caplog.records if "Could not load" in r.getMessage()]
        assert failures == [], failures
    # What version 3 waited for, each logged once: its index, then its data.
    waiting = [r.getMessage() for r in caplog.records if target in r.getMessage()]
    assert len(waiting) == 2, waiting
    for line, missing in zip(waiting, ("variables/variables.index", DATA_SHARD)):
        assert f"has no {missing}. It is not loaded until it is complete." in line, line
    # Version 3's data file arrives cut short, and stays so: the loader fails, once.
    with open(os.path.join(source, DATA_SHARD), "rb") as f:
        data = f.read()
    with open(os.path.join(target, DATA_SHARD), "wb") as f:
        f.write(data[:len(data) // 2])
    for _ in range(3):
        registry.reload()
    assert registry.versions("pun") == [2]
    failures = [r.getMessage() for r in caplog.records if "Could not load" in r.getMessage()]
    assert len(failures) == 1 and target in failures[0], failures
    with open(os.path.join(target, DATA_SHARD), "ab") as f:
        f.write(data[len(data) // 2:])
    registry.reload()
    assert registry.versions("pun") == [3]
    registry.close()


def test_version_folders_with_odd_names_do_not_stop_the_model(tmp_path):
    """`²` passes `str.isdigit`, a 20-digit name overflows int64, `0007` is version 7 in its own
    folder: none of them stops later versions from being served, or the gRPC API answering."""
    base = str(tmp_path)
    export.export_for_serving(served_model(1), base, "pun")
    one = os.path.join(base, "pun", "1")
    os.makedirs(os.path.join(base, "pun", "\u00b2"))
    with open(os.path.join(base, "pun", "\u00b2", "saved_model.pb"), "w") as f:
        f.write("x")
    shutil.copytree(one, os.path.join(base, "pun", "9" * 20))
    assert export.next_version(os.path.join(base, "pun")) == 2
    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0.1) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        assert running.registry.versions("pun") == [1]
        export.export_for_serving(served_model(2), base, "pun")
        _wait_for(lambda: running.registry.versions("pun") == [2])
        shutil.copytree(one, os.path.join(base, "pun", "0007"))
        _wait_for(lambda: running.registry.versions("pun") == [7])
        assert client.predict(served_images(), 2)["masks"].shape == (2, 2, 16, 16)


REST_CASES = [
    # (name, raw body or JSON-able body, expected status, text in the error)
    ("num_samples 10**10", {"inputs": {"num_samples": 10**10}}, 400, "num_samples"),
    ("num_samples 2.7", {"inputs": {"num_samples": 2.7}}, 400, "integer"),
    ("signature_name a list", {"signature_name": ["sample"], "inputs": {}}, 400,
     "signature_name"),
    ("nested brackets", b"[" * (8 << 20), 400, "JSON"),
    ("not JSON", b"{images: 1", 400, "JSON"),
    ("inputs a list", {"inputs": [1, 2]}, 400, "inputs"),
    ("ragged images", {"inputs": {"images": [[1.0], [1.0, 2.0]], "num_samples": 2,
                                  "seed": [1, 2]}}, 400, "images"),
    ("seed strings", {"inputs": {"images": [[[[0.5]]]], "num_samples": 2, "seed": ["a", "b"]}},
     400, "seed"),
    ("output_filter", {"inputs": {}, "output_filter": ["masks"]}, 400, "output_filter"),
    ("not an object", [1, 2, 3], 400, "object"),
]


def _post(port, body, headers=None, path="/v1/models/pun:predict"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.putrequest("POST", path)
    for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        connection.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered before reading it all
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload)


def test_every_malformed_rest_body_gets_a_json_4xx(base):
    with serving.ModelServer(base, port=0, rest_port=0) as running:
        for name, body, status, text in REST_CASES:
            got, answer = _post(running.rest_port, body)
            assert got == status, (name, got, answer)
            assert text in answer["error"], (name, answer)
        # A body announced beyond the limit is refused before it is read.
        got, answer = _post(running.rest_port, b"{}", {"Content-Length": str(10**15)})
        assert got == 413 and "max_body_bytes" in answer["error"], answer
        for length in ("lots", "\u00b2"):
            got, answer = _post(running.rest_port, b"{}", {"Content-Length": length})
            assert got == 400 and "Content-Length" in answer["error"], answer
        # What http.server answers itself (a bad request line, other methods) is JSON too.
        for raw in (b"GARBAGE\r\n\r\n", b"PUT /v1/models/pun HTTP/1.1\r\n\r\n",
                    b"GET /v1/models/pun HTTP/9.9\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", running.rest_port), timeout=30) as s:
                s.sendall(raw)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert b"application/json" in head and "error" in json.loads(body), data
        # The server still answers a good request.
        got, answer = _post(running.rest_port, {"signature_name": "features", "inputs": {
            "images": served_images(batch=1).tolist()}})
        assert got == 200 and np.shape(answer["outputs"]["features"]) == (1, 16, 16, F)


def test_clients_that_stop_sending_are_dropped_after_the_read_timeout(base):
    with serving.ModelServer(base, port=0, rest_port=0, request_timeout=1.0) as running:
        stalled = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", running.rest_port))
            s.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(s)
        # A client that sends a header line now and then, never finishing its request, is
        # dropped too: the timeout is per request, not per read.
        drip = socket.create_connection(("127.0.0.1", running.rest_port))
        drip.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\n")
        drip.settimeout(0.05)
        start, closed = time.monotonic(), False
        while not closed and time.monotonic() - start < 4.0:
            time.sleep(0.3)
            try:
                drip.sendall(b"X-a: b\r\n")
                closed = drip.recv(4096) == b""
            except socket.timeout:
                pass
            except OSError:  # reset by the server
                closed = True
        drip.close()
        assert closed, "a client dripping header lines held its connection for 4 s"
        for s in stalled:  # the server answered 408 and closed the connection
            s.settimeout(5)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.0 408") or data.startswith(b"HTTP/1.1 408"), data
            s.close()
        got, _ = _post(running.rest_port, {"signature_name": "features", "inputs": {
            "images": served_images(batch=1).tolist()}})
        assert got == 200


def test_rest_work_is_bounded_by_rest_workers_and_slow_senders_hold_no_slot(base):
    """At most `rest_workers` REST requests are parsed and answered at once (each may take about
    1 GB at the default limits); one that waits longer than `request_timeout` for a slot gets a
    JSON 503 naming the setting. Clients still sending their body hold no slot."""
    features = {"signature_name": "features",
                "inputs": {"images": served_images(batch=1).tolist()}}
    with serving.ModelServer(base, port=0, rest_port=0, rest_workers=1,
                             request_timeout=1.5) as running:
        stalled = []
        for _ in range(4):  # bodies that never arrive: a slot each, if reading took one
            s = socket.create_connection(("127.0.0.1", running.rest_port))
            s.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
            stalled.append(s)
        time.sleep(0.2)
        got, answer = _post(running.rest_port, features)
        assert got == 200 and np.shape(answer["outputs"]["features"]) == (1, 16, 16, F)
        with running._http.slot():  # the one slot busy answering another request
            got, answer = _post(running.rest_port, features)
            assert got == 503 and "rest_workers" in answer["error"], answer
            rest = serving.RestClient(f"http://127.0.0.1:{running.rest_port}", "pun")
            with pytest.raises(serving.ServingError) as caught:
                rest.features(served_images(batch=1))
            assert caught.value.code == "UNAVAILABLE"
        got, _ = _post(running.rest_port, features)
        assert got == 200
        for s in stalled:
            s.close()


@pytest.mark.slow
def test_rest_memory_is_bounded_by_rest_workers_whatever_the_clients_do(base):
    """REST memory once grew with the number of clients: responses were encoded and sent after
    their slot was released (8 clients reading slowly held 8 encoded responses), and bodies
    were read without bound (60 uploads of 32 MiB: +3.3 GB). Now a response is encoded and
    sent within its slot, and the bodies being read are bounded in bytes."""
    with serve_process(base, "--rest-workers", "1", "--max-body-bytes", str(2**23),
                       "--request-timeout", "6") as (process, port, rest_port):
        features = json.dumps({"signature_name": "features", "inputs": {
            "images": np.zeros((1, 512, 512, C), np.float32).tolist()}}).encode()
        got, _ = _post(rest_port, features)  # warm: one response of ~40 MB of JSON
        assert got == 200
        before = _peak_rss_mb(process.pid)
        slow = []
        for _ in range(8):  # ask, then do not read the answer for a while
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            s.connect(("127.0.0.1", rest_port))
            s.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\nContent-Length: "
                      + str(len(features)).encode() + b"\r\n\r\n" + features)
            slow.append(s)
        time.sleep(4)
        uploads = []
        for _ in range(24):  # 24 bodies of 8 MiB arriving at once
            s = socket.create_connection(("127.0.0.1", rest_port))
            s.sendall(b"POST /v1/models/pun:predict HTTP/1.1\r\nContent-Length: "
                      + str(2**23).encode() + b"\r\n\r\n")
            uploads.append(s)
        chunk = b" " * 2**20
        for _ in range(8):
            for s in uploads:
                try:
                    s.sendall(chunk)
                except OSError:  # refused (503) and closed by the server: fine
                    pass
        time.sleep(2)
        grown = _peak_rss_mb(process.pid) - before
        for s in slow + uploads:
            s.close()
        assert grown < 300, f"the server's peak memory grew by {grown:.0f} MB"
        got, answer = _post(rest_port, features)  # and it keeps serving
        assert got == 200 and np.shape(answer["outputs"]["features"]) == (1, 512, 512, F)


def test_long_error_messages_keep_their_status_over_grpc(base):
    """gRPC drops trailers over 16 KB, turning the status into RESOURCE_EXHAUSTED: a
    message that echoes 20,000 characters of the request is cut short instead."""
    with serving.ModelServer(base, port=0, rest_port=None) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        images = {"images": served_images(batch=1)}
        cases = [(raw_request("features", images, model="x" * 20000), "NOT_FOUND"),
                 (raw_request("x" * 20000, images), "FAILED_PRECONDITION"),
                 (raw_request("features", {**images, **{f"extra_input_{i:06d}": np.float32(0)
                                                        for i in range(1000)}}),
                  "INVALID_ARGUMENT")]
        for request, code in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=30)
            assert caught.value.code() == getattr(grpc.StatusCode, code), caught.value.details()
            assert len(caught.value.details()) < 4200
        channel.close()


def test_a_response_at_the_message_limit_is_refused_before_it_is_computed(base):
    """The check allowed a response of exactly max_message_bytes of values, which gRPC then
    refused for its framing, after computing it, without naming the limit."""
    values = 16 * 16 * F + 2 * N  # `features` of one 16x16 image: features, prior loc, scale
    with serving.ModelServer(base, port=0, rest_port=None,
                             max_message_bytes=4 * values) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        with pytest.raises(serving.ServingError) as caught:
            client.features(served_images(batch=1))
        assert caught.value.code == "RESOURCE_EXHAUSTED"
        assert "max_message_bytes" in caught.value.message, caught.value.message


def test_version_loads_leave_no_garbage_behind(tmp_path):
    """Each failed load left a graph in reference cycles that only a full garbage collection
    frees (about 6.5 MB each, 12 MB per good load of a 0.1 MB model): the registry collects
    after every load."""
    import gc

    base = str(tmp_path)
    export.export_for_serving(served_model(3), base, "pun")
    good = os.path.join(base, "pun", "1")
    broken = os.path.join(base, "pun", "2")
    shutil.copytree(good, broken)
    _break(broken)

    def graphs():
        return sum(isinstance(o, tf.Graph) for o in gc.get_objects())

    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0) as running:
        gc.collect()
        gc.disable()
        try:
            before = graphs()
            for i in range(6):  # the broken folder changes: loaded again, fails again
                with open(os.path.join(broken, "variables", "junk"), "w") as f:
                    f.write(str(i))
                running.registry.reload()
            assert running.registry.versions("pun") == [1]
            assert graphs() - before <= 1
        finally:
            gc.enable()


def test_a_removed_version_falls_back_to_the_previous_one(tmp_path):
    """TF Serving unloads a version whose folder is removed and serves the newest left."""
    base = str(tmp_path)
    for _ in range(2):
        export.export_for_serving(served_model(3), base, "pun")
    with serving.ModelServer(base, port=0, rest_port=None, poll_seconds=0) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        assert running.registry.versions("pun") == [2]
        shutil.rmtree(os.path.join(base, "pun", "2"))
        running.registry.reload()
        assert running.registry.versions("pun") == [1]
        assert client.features(served_images(batch=1))["features"].shape == (1, 16, 16, F)
        shutil.rmtree(os.path.join(base, "pun", "1"))
        running.registry.reload()
        with pytest.raises(serving.ServingError) as caught:
            client.features(served_images(batch=1))
        assert caught.value.code == "NOT_FOUND"


def _poison(version_dir, suffix="kernel"):
    """Write NaN into the first variable of the SavedModel at `version_dir` whose name ends with
    `suffix`, as a diverged run leaves its weights: the checkpoint is written again, same keys,
    with `SaveV2`. Returns that variable's name."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = os.path.join(version_dir, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    names = {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes}
    keys = sorted(reader.get_variable_to_dtype_map())
    tensors = [reader.get_tensor(k) for k in keys]
    key = next(k for k in keys if names.get(k, "").endswith(suffix))
    tensors[keys.index(key)] = np.full_like(tensors[keys.index(key)], np.nan)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=tensors)
    return names[key]


def test_a_version_with_non_finite_variables_is_not_served(base, tmp_path, caplog):
    """A SavedModel whose variables hold NaN (a diverged run, exported by another tool) is
    refused at load, logged with its path: the previous version and the other models keep
    serving."""
    served = str(tmp_path / "base")
    shutil.copytree(base, served)
    one = os.path.join(served, "pun", "1")
    shutil.copytree(one, os.path.join(served, "pun", "2"))
    variable = _poison(os.path.join(served, "pun", "2"))
    shutil.copytree(os.path.join(served, "pun", "2"), os.path.join(served, "nan", "1"))
    caplog.set_level(logging.WARNING)
    with serving.ModelServer(served, port=0, rest_port=None, poll_seconds=0) as running, \
            serving.GrpcClient(f"127.0.0.1:{running.port}", "pun") as client:
        assert running.registry.versions("pun") == [1]
        assert running.registry.versions("nan") == []
        assert client.features(served_images(batch=1))["features"].shape == (1, 16, 16, F)
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "nan") as nan:
            with pytest.raises(serving.ServingError) as caught:
                nan.features(served_images(batch=1))
        assert caught.value.code == "NOT_FOUND"
    logged = " ".join(r.getMessage() for r in caplog.records)
    for path in (os.path.join(served, "pun", "2"), os.path.join(served, "nan", "1")):
        assert path in logged, logged
    assert "non-finite" in logged and variable in logged, logged


def test_not_found_names_the_model_only(tmp_path, caplog):
    """A 404 once said `/srv/models/bad/1 failed to load (OSError: ...)` to any client: the
    answer names the model, the paths and the loader's error go to the server's log."""
    base = str(tmp_path)
    export.export_for_serving(served_model(3), base, "pun")
    shutil.copytree(os.path.join(base, "pun", "1"), os.path.join(base, "bad", "1"))
    _break(os.path.join(base, "bad", "1"))
    caplog.set_level(logging.WARNING)
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as running:
        rest = serving.RestClient(f"http://127.0.0.1:{running.rest_port}", "bad")
        with pytest.raises(serving.ServingError) as caught:
            rest.status()
        with serving.GrpcClient(f"127.0.0.1:{running.port}", "bad") as client:
            with pytest.raises(serving.ServingError) as over_grpc:
                client.features(served_images(batch=1))
    for error in (caught.value, over_grpc.value):
        assert error.code == "NOT_FOUND"
        assert error.message == "Servable not found for request: Latest(bad)", error.message
    assert os.path.join(base, "bad", "1") in " ".join(r.getMessage() for r in caplog.records)


def _raw_http(port, request):
    """Send `request` (bytes) on a new connection; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_requests_whose_length_is_ambiguous_are_refused(base):
    """RFC 9112 section 6.3: Content-Length with Transfer-Encoding, or Content-Lengths that
    differ, let a proxy and the server see different requests: 400, not an answer."""
    body = json.dumps({"signature_name": "features",
                       "inputs": {"images": served_images(batch=1).tolist()}}).encode()
    start = b"POST /v1/models/pun:predict HTTP/1.1\r\nHost: x\r\n"
    length = b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    with serving.ModelServer(base, port=0, rest_port=0) as running:
        status, answer = _raw_http(running.rest_port, start + length + b"\r\n" + body)
        assert status == 200 and "features" in answer["outputs"]
        for headers, text in [
                (length + b"Transfer-Encoding: chunked\r\n", "Transfer-Encoding"),
                (b"Transfer-Encoding: identity\r\n" + length, "Transfer-Encoding"),
                (length + b"Content-Length: 5\r\n", "Content-Length"),
                (length + b"content-length: " + str(len(body) + 1).encode() + b"\r\n",
                 "Content-Length")]:
            status, answer = _raw_http(running.rest_port, start + headers + b"\r\n" + body)
            assert status == 400 and text in answer["error"], (headers, status, answer)
            assert "RFC 9112" in answer["error"], answer


@pytest.mark.parametrize("which", ["grpc", "rest"])
def test_a_port_in_use_is_refused_naming_it_and_the_first_server_keeps_serving(base, which):
    """gRPC servers bind with SO_REUSEPORT by default: a second `serve` on a port that another
    server holds once started without a word and took a share of its connections (a stale
    server answering for the new one). Both ports are now refused in one line naming the port
    and the flag; the first server answers every request after."""
    with serving.ModelServer(base, port=0, rest_port=0, poll_seconds=0) as first:
        taken = first.port if which == "grpc" else first.rest_port
        ports = dict(port=taken, rest_port=None) if which == "grpc" else dict(port=0,
                                                                             rest_port=taken)
        flag = "--port" if which == "grpc" else "--rest-port"
        with pytest.raises(OSError, match=rf"port {taken} of 127\.0\.0\.1 is in use .*{flag}"):
            serving.ModelServer(base, poll_seconds=0, **ports)
        for _ in range(8):  # new connections each: none lands on another server
            with serving.GrpcClient(f"127.0.0.1:{first.port}", "pun") as client:
                assert client.features(served_images(batch=1))["features"].shape[0] == 1
        assert serving.RestClient(f"http://127.0.0.1:{first.rest_port}", "pun").status()
