"""gRPC Server Reflection: what the runtime's gRPC port serves, described to any client.

grpcurl (``list``, ``describe``), grpcui, Postman, Kreya and grpcio-reflection's client
discover a service without its .proto by asking the server. They call
``grpc.reflection.v1.ServerReflection/ServerReflectionInfo`` (or the older
``grpc.reflection.v1alpha`` one: the same messages under another package; grpcurl falls
back to it), a bidirectional stream on which every request message gets one answer:

- ``list_services``: the services served (the Open Inference Protocol's and these two);
- ``file_by_filename`` and ``file_containing_symbol`` (a fully-qualified service, method,
  message, field, oneof, enum or enum value): the serialized FileDescriptorProto of the
  file, then those of its dependencies, from the generated modules' descriptors;
- ``all_extension_numbers_of_type``: none for a message served (the files declare no
  extensions), as grpc-go and grpcio answer;
- anything not served here (an unknown file or symbol, and any
  ``file_containing_extension``) gets an ``error_response`` of NOT_FOUND that names it, and
  a request asking nothing one of INVALID_ARGUMENT; the stream stays open for the next.

:mod:`.grpc_server` serves :meth:`Reflection.answer` per message, behind the same API-key
check and rate limit as ModelMetadata, over :mod:`.grpc_wire`'s streaming calls; the
setting ``grpc_reflection`` (``MODELSHIP_GRPC_REFLECTION``) turns it off. Only the files
given are described: not the default descriptor pool, which may hold other modules'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import ModuleType

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from google.protobuf.message import DecodeError

from ._proto import reflection_v1_pb2, reflection_v1alpha_pb2
from .grpc_wire import INVALID_ARGUMENT, GrpcError

NOT_FOUND = 5
METHOD = "ServerReflectionInfo"
#: The two versions of the protocol: their generated modules.
VERSIONS: tuple[ModuleType, ...] = (reflection_v1_pb2, reflection_v1alpha_pb2)
#: A name quoted in an error message is cut to this many characters.
_QUOTED = 200


def path(version: ModuleType) -> str:
    """The gRPC path of ``version``'s ServerReflectionInfo."""
    service = version.DESCRIPTOR.services_by_name["ServerReflection"]
    return f"/{service.full_name}/{METHOD}"


def _quote(name: str) -> str:
    return repr(name if len(name) <= _QUOTED else name[:_QUOTED] + "...")


def _enum_symbols(enum: EnumDescriptor) -> Iterator[str]:
    yield enum.full_name
    # an enum value's scope is the enum's (C++ scoping): a sibling of the enum
    scope = enum.full_name.rpartition(".")[0]
    for value in enum.values:
        yield f"{scope}.{value.name}" if scope else value.name


def _message_symbols(message: Descriptor) -> Iterator[str]:
    yield message.full_name
    for field in message.fields:
        yield field.full_name
    for oneof in message.oneofs:
        yield oneof.full_name
    for nested in message.nested_types:
        yield from _message_symbols(nested)
    for enum in message.enum_types:
        yield from _enum_symbols(enum)


def _message_names(message: Descriptor) -> Iterator[str]:
    yield message.full_name
    for nested in message.nested_types:
        yield from _message_names(nested)


class Reflection:
    """The descriptions of ``files`` (generated modules' ``DESCRIPTOR``) and the files
    they import, ready to serve."""

    def __init__(self, files: Iterable[FileDescriptor]) -> None:
        self.files: dict[str, FileDescriptor] = {}
        self.symbols: dict[str, str] = {}  # fully-qualified name -> its file's name
        self.messages: set[str] = set()
        self.services: list[str] = []
        self._answers: dict[str, list[bytes]] = {}  # a file's name -> what describes it
        for file in files:
            self._add(file)
        self.services.sort()

    def _add(self, file: FileDescriptor) -> None:
        if file.name in self.files:
            return
        self.files[file.name] = file
        for dependency in file.dependencies:
            self._add(dependency)
        for service in file.services_by_name.values():
            self.services.append(service.full_name)
            self.symbols[service.full_name] = file.name
            for method in service.methods:
                self.symbols[method.full_name] = file.name
        for message in file.message_types_by_name.values():
            for symbol in _message_symbols(message):
                self.symbols[symbol] = file.name
            self.messages.update(_message_names(message))
        for enum in file.enum_types_by_name.values():
            for symbol in _enum_symbols(enum):
                self.symbols[symbol] = file.name

    def described(self, name: str) -> list[bytes]:
        """The serialized FileDescriptorProto of file ``name``, then those of the files it
        imports (each once, directly or not)."""
        answer = self._answers.get(name)
        if answer is None:
            order: list[FileDescriptor] = []

            def visit(file: FileDescriptor) -> None:
                if file not in order:
                    order.append(file)
                    for dependency in file.dependencies:
                        visit(dependency)

            visit(self.files[name])
            answer = self._answers[name] = [f.serialized_pb for f in order]
        return answer

    def answer(self, message: bytes, version: ModuleType) -> bytes:
        """The serialized ServerReflectionResponse (of ``version``'s module) to one
        serialized ServerReflectionRequest; GrpcError INVALID_ARGUMENT when it is not one."""
        try:
            request = version.ServerReflectionRequest.FromString(message)
        except DecodeError as exc:
            raise GrpcError(INVALID_ARGUMENT, "the request is not a "
                            f"{version.ServerReflectionRequest.DESCRIPTOR.full_name}: "
                            f"{exc}") from None
        response = version.ServerReflectionResponse(valid_host=request.host,
                                                    original_request=request)
        asked = request.WhichOneof("message_request")
        error: tuple[int, str] | None = None
        if asked == "list_services":
            for name in self.services:
                response.list_services_response.service.add(name=name)
        elif asked == "file_by_filename":
            name = request.file_by_filename
            if name in self.files:
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self.described(name))
            else:
                error = NOT_FOUND, (f"no file {_quote(name)} here; the files served are "
                                    + ", ".join(sorted(self.files)))
        elif asked == "file_containing_symbol":
            symbol = request.file_containing_symbol
            file = self.symbols.get(symbol)
            if file is not None:
                response.file_descriptor_response.file_descriptor_proto.extend(
                    self.described(file))
            else:
                error = NOT_FOUND, (f"no symbol {_quote(symbol)} here (a fully-qualified "
                                    "name is needed, such as "
                                    "inference.GRPCInferenceService.ModelInfer)")
        elif asked == "file_containing_extension":
            ext = request.file_containing_extension
            error = NOT_FOUND, (f"no extension {ext.extension_number} of "
                                f"{_quote(ext.containing_type)} here: the files served "
                                "declare no extensions")
        elif asked == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            if name in self.messages:
                response.all_extension_numbers_response.base_type_name = name
            else:
                error = NOT_FOUND, f"no message type {_quote(name)} here"
        else:
            error = INVALID_ARGUMENT, ("the request asks for nothing: set one of "
                                       "list_services, file_by_filename, "
                                       "file_containing_symbol, file_containing_extension, "
                                       "all_extension_numbers_of_type")
        if error is not None:
            response.error_response.error_code, response.error_response.error_message = error
        out: bytes = response.SerializeToString()
        return out
