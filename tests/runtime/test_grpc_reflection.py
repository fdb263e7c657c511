"""gRPC Server Reflection against a real ``modelship-runtime serve`` (API keys on), driven
by real reflection clients, as grpcurl, grpcui and Postman drive it.

grpcio-reflection's ``ProtoReflectionDescriptorDatabase`` (a v1alpha client) feeds a
protobuf DescriptorPool of its own: from what it discovers alone a ModelInferRequest is
built and ModelInfer called, and the answer must be scikit-learn's. The same client runs
against the v1 method too (the two versions' messages are the same field for field).
grpclib's v1 stub (another HTTP/2 stack, h2) and grpcio's stream-stream client keep one
stream open and send each request once the last is answered, as grpcurl does: every
kind of request on one stream, NOT_FOUND for what is not served, the API key, a message
over the limit, a stream cancelled mid-way, and the setting that turns reflection off.

Nothing here imports the runtime's generated modules: the default descriptor pool holds
tritonclient's and grpcio-reflection's (see test_grpc_stubs.py).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

grpc_reflection = pytest.importorskip(
    "grpc_reflection.v1alpha.proto_reflection_descriptor_database",
    reason="grpcio-reflection missing (make setup installs it)")
grpclib_client = pytest.importorskip("grpclib.client", reason="grpclib missing (make setup "
                                     "installs it)")
import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2 as alpha  # noqa: E402
from grpclib.const import Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from grpclib.reflection.v1 import reflection_grpc as v1_grpc  # noqa: E402
from grpclib.reflection.v1 import reflection_pb2 as v1  # noqa: E402
from test_grpc import KEY, MODEL, N_FEATURES, Runtime, start_runtime, stop  # noqa: E402

AUTH = (("x-api-key", KEY),)
PATHS = {"v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
         "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}
SERVICES = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
            "inference.GRPCInferenceService"]
V2 = "inference.GRPCInferenceService"
LIMIT = 64 * 1024  # the runtime's max_body_bytes here
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def runtime(local_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("grpc-reflection")
    (root / "keys").write_text(f"{KEY}\n")
    r = start_runtime(local_models.lr_dir, root, MODELSHIP_API_KEYS_FILE=str(root / "keys"),
                      MODELSHIP_DRAIN_SECONDS="0", MODELSHIP_MAX_BODY_BYTES=str(LIMIT))
    yield r
    stop(r.proc)
    assert r.proc.returncode == 0, Path(r.log).read_text()


class _Key(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The API key on every call of a channel (the reflection client takes no metadata)."""

    @staticmethod
    def _with_key(details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *AUTH])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


def keyed(runtime: Runtime) -> grpc.Channel:
    return grpc.intercept_channel(grpc.insecure_channel(runtime.grpc), _Key())


def database(channel: grpc.Channel, version: str) -> Any:
    """grpcio-reflection's client; for v1, its stub's path is v1's (same messages)."""
    db = grpc_reflection.ProtoReflectionDescriptorDatabase(channel)
    if version == "v1":
        db._stub.ServerReflectionInfo = channel.stream_stream(
            PATHS["v1"], request_serializer=alpha.ServerReflectionRequest.SerializeToString,
            response_deserializer=alpha.ServerReflectionResponse.FromString)
    return db


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_a_client_discovers_the_service_and_calls_model_infer_with_what_it_found(
        runtime: Runtime, local_models: Any, version: str) -> None:
    with keyed(runtime) as channel:
        db = database(channel, version)
        assert sorted(db.get_services()) == SERVICES
        pool = descriptor_pool.DescriptorPool(db)
        service = pool.FindServiceByName(V2)
        assert {m.name for m in service.methods} == {
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
            "ModelInfer"}
        infer = service.methods_by_name["ModelInfer"]
        assert infer.input_type.full_name == "inference.ModelInferRequest"
        # a field, a nested message and the reflection service itself are found too
        shape = pool.FindFieldByName("inference.ModelInferRequest.InferInputTensor.shape")
        assert shape.number == 3
        reflection = pool.FindServiceByName(PATHS[version].split("/")[1])
        assert reflection.methods_by_name["ServerReflectionInfo"].client_streaming
        request_class = message_factory.GetMessageClass(infer.input_type)
        reply_class = message_factory.GetMessageClass(infer.output_type)
        rows = local_models.X[:5]
        request = request_class(model_name=MODEL)
        tensor = request.inputs.add(name="input-0", datatype="FP64",
                                    shape=[len(rows), N_FEATURES])
        tensor.contents.fp64_contents.extend(rows.ravel().tolist())
        request.outputs.add(name="predict")
        call = channel.unary_unary(f"/{V2}/ModelInfer",
                                   request_serializer=request_class.SerializeToString,
                                   response_deserializer=reply_class.FromString)
        reply = call(request, timeout=60)
        (predict,) = reply.outputs
        assert predict.name == "predict"
        np.testing.assert_array_equal(list(predict.contents.int64_contents),
                                      local_models.lr.predict(rows))


def test_every_kind_of_request_on_one_grpclib_v1_stream(runtime: Runtime) -> None:
    """One stream, each request sent once the last is answered, then half-closed: the
    stream ends OK. Unknown names are NOT_FOUND error_responses and the stream goes on."""
    host, port = runtime.grpc.rsplit(":", 1)

    async def talk() -> list[Any]:
        answers = []
        requests = [
            v1.ServerReflectionRequest(list_services="*", host="h"),
            v1.ServerReflectionRequest(file_containing_symbol=f"{V2}.ModelInfer"),
            v1.ServerReflectionRequest(file_containing_symbol="inference.Nope"),
            v1.ServerReflectionRequest(all_extension_numbers_of_type=(
                "inference.ModelInferRequest")),
            v1.ServerReflectionRequest(all_extension_numbers_of_type="inference.Nope"),
            v1.ServerReflectionRequest(file_containing_extension=v1.ExtensionRequest(
                containing_type="inference.ModelInferRequest", extension_number=100)),
            v1.ServerReflectionRequest(),
        ]
        async with grpclib_client.Channel(host, int(port)) as ch:
            stub = v1_grpc.ServerReflectionStub(ch)
            async with stub.ServerReflectionInfo.open(metadata=dict(AUTH),
                                                      timeout=60) as stream:
                for request in requests:
                    await stream.send_message(request)
                    answers.append(await stream.recv_message())
                # the file by the name the symbol's answer gave
                file = descriptor_pb2.FileDescriptorProto.FromString(
                    answers[1].file_descriptor_response.file_descriptor_proto[0])
                await stream.send_message(v1.ServerReflectionRequest(file_by_filename=file.name))
                answers.append(await stream.recv_message())
                await stream.send_message(v1.ServerReflectionRequest(
                    file_by_filename="nope.proto"))
                answers.append(await stream.recv_message())
                await stream.end()
                assert await stream.recv_message() is None
                await stream.recv_trailing_metadata()  # raises unless the status is OK
        return answers

    answers = asyncio.run(talk())
    listed, symbol, no_symbol, numbers, no_type, extension, nothing, by_name, no_file = answers
    assert listed.valid_host == "h" and listed.original_request.list_services == "*"
    assert [s.name for s in listed.list_services_response.service] == SERVICES
    (file_bytes,) = symbol.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(file_bytes)
    assert file.package == "inference" and [s.name for s in file.service] == [
        "GRPCInferenceService"]
    assert len(file_bytes) > 2000  # the whole V2 file: more than a small frame's worth
    assert by_name.file_descriptor_response.file_descriptor_proto == [file_bytes]
    for answer, name in ((no_symbol, "inference.Nope"), (no_type, "inference.Nope"),
                         (extension, "inference.ModelInferRequest"),
                         (no_file, "nope.proto")):
        assert answer.WhichOneof("message_response") == "error_response"
        assert answer.error_response.error_code == NOT_FOUND
        assert name in answer.error_response.error_message
    assert numbers.all_extension_numbers_response.base_type_name == (
        "inference.ModelInferRequest")
    assert list(numbers.all_extension_numbers_response.extension_number) == []
    assert nothing.error_response.error_code == INVALID_ARGUMENT
    assert "list_services" in nothing.error_response.error_message


class Talk:
    """Request messages sent one at a time, when the test says; ``end`` half-closes."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def __iter__(self) -> Iterator[Any]:
        while (message := self.queue.get()) is not None:
            yield message

    def send(self, message: Any) -> None:
        self.queue.put(message)

    def end(self) -> None:
        self.queue.put(None)


def open_stream(channel: grpc.Channel, talk: Talk, **kwargs: Any) -> Any:
    method = channel.stream_stream(
        PATHS["v1alpha"], request_serializer=alpha.ServerReflectionRequest.SerializeToString,
        response_deserializer=alpha.ServerReflectionResponse.FromString)
    return method(iter(talk), timeout=60, **kwargs)


def server_live(channel: grpc.Channel) -> bytes:
    answer: bytes = channel.unary_unary(f"/{V2}/ServerLive")(b"", timeout=30)
    return answer


def test_a_stream_cancelled_mid_way_leaves_the_connection_serving(runtime: Runtime) -> None:
    with grpc.insecure_channel(runtime.grpc) as channel:
        for _ in range(3):
            talk = Talk()
            answers = open_stream(channel, talk, metadata=AUTH)
            talk.send(alpha.ServerReflectionRequest(list_services=""))
            assert len(next(answers).list_services_response.service) == 3
            talk.send(alpha.ServerReflectionRequest(file_containing_symbol=V2))
            assert next(answers).file_descriptor_response.file_descriptor_proto
            answers.cancel()  # what grpcurl does when it is done
            assert answers.code() == grpc.StatusCode.CANCELLED
            talk.end()
            assert server_live(channel) == b"\x08\x01"  # live: true


def test_reflection_needs_the_api_key_as_model_metadata_does(runtime: Runtime) -> None:
    with grpc.insecure_channel(runtime.grpc) as channel:
        for metadata in ((), (("x-api-key", "wrong"),)):
            talk = Talk()
            answers = open_stream(channel, talk, metadata=metadata)
            talk.send(alpha.ServerReflectionRequest(list_services=""))
            with pytest.raises(grpc.RpcError) as err:
                next(answers)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API key" in (err.value.details() or "")
            talk.end()
        with pytest.raises(grpc.RpcError) as err:
            database(channel, "v1").get_services()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert server_live(channel) == b"\x08\x01"  # health stays open, as over HTTP


def test_a_reflection_message_over_the_limit_is_resource_exhausted(runtime: Runtime) -> None:
    with keyed(runtime) as channel:
        talk = Talk()
        answers = open_stream(channel, talk)
        talk.send(alpha.ServerReflectionRequest(list_services=""))
        assert next(answers).list_services_response.service
        talk.send(alpha.ServerReflectionRequest(file_containing_symbol="x" * (LIMIT + 1)))
        with pytest.raises(grpc.RpcError) as err:
            next(answers)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(LIMIT) in (err.value.details() or "")
        talk.end()
        assert sorted(database(channel, "v1alpha").get_services()) == SERVICES


def test_reflection_turned_off_is_unimplemented(local_models: Any, tmp_path: Path) -> None:
    r = start_runtime(local_models.lr_dir, tmp_path, MODELSHIP_GRPC_REFLECTION="false",
                      MODELSHIP_DRAIN_SECONDS="0")
    try:
        with grpc.insecure_channel(r.grpc) as channel:
            for version in PATHS:
                with pytest.raises(grpc.RpcError) as err:
                    database(channel, version).get_services()
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert server_live(channel) == b"\x08\x01"
    finally:
        stop(r.proc)


def test_grpclib_sees_unauthenticated_without_the_key(runtime: Runtime) -> None:
    host, port = runtime.grpc.rsplit(":", 1)

    async def ask() -> None:
        async with grpclib_client.Channel(host, int(port)) as ch:
            stub = v1_grpc.ServerReflectionStub(ch)
            await stub.ServerReflectionInfo([v1.ServerReflectionRequest(list_services="")],
                                            timeout=60)

    with pytest.raises(GRPCError) as err:
        asyncio.run(ask())
    assert err.value.status == Status.UNAUTHENTICATED
