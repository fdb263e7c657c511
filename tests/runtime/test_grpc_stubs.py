"""The committed gRPC modules are what grpcio-tools makes of the committed .proto files,
the V2 .proto is wire-compatible with the service real V2 clients call, and the gRPC
Server Reflection ones with the messages real reflection clients send (grpcio-reflection's
v1alpha, grpclib's v1 and v1alpha).

Neither test imports the runtime's generated modules: they register the ``inference``
protobuf package, as tritonclient's do, and one process cannot hold both (the gRPC tests
import tritonclient.grpc). The .proto is compiled to a descriptor set instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_protos.py"
PROTO = REPO / "runtime" / "modelship_runtime" / "_proto" / "grpc_predict_v2.proto"
REFLECTION = {v: PROTO.parent / f"reflection_{v}.proto" for v in ("v1", "v1alpha")}


def test_committed_modules_match_a_fresh_generation() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools missing (make setup installs it)")
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _compiled(tmp_path: Path, proto: Path = PROTO) -> object:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / f"{proto.stem}.pb"
    assert protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}",
                        str(proto)]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(files.file) == 1
    return files.file[0]


def _fields(message: object, prefix: str) -> dict[str, tuple[int, int, int, str]]:
    """Every field of a message (nested ones too): name -> (number, type, label, type name)."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for f in message.field:  # type: ignore[attr-defined]
        out[f"{prefix}.{f.name}"] = (f.number, f.type, f.label, f.type_name)
    for nested in message.nested_type:  # type: ignore[attr-defined]
        out.update(_fields(nested, f"{prefix}.{nested.name}"))
    return out


def test_the_proto_is_wire_compatible_with_tritonclient(tmp_path: Path) -> None:
    """Every service method and message field of ours exists in tritonclient's published
    service under the same path, number and type (Triton's is a superset of the V2 one)."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools missing (make setup installs it)")
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient missing (make setup installs it)")
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    ours = _compiled(tmp_path)
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference"  # type: ignore[attr-defined]
    (service,) = ours.service  # type: ignore[attr-defined]
    their_service = next(s for s in theirs.service if s.name == service.name)
    their_methods = {m.name: (m.input_type, m.output_type) for m in their_service.method}
    methods = {m.name: (m.input_type, m.output_type) for m in service.method}
    assert set(methods) == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                            "ModelMetadata", "ModelInfer"}
    for name, types in methods.items():
        assert their_methods.get(name) == types, name
    their_messages = {m.name: m for m in theirs.message_type}
    compared = 0
    for message in ours.message_type:  # type: ignore[attr-defined]
        assert message.name in their_messages, message.name
        their = _fields(their_messages[message.name], message.name)
        for field, spec in _fields(message, message.name).items():
            assert their.get(field) == spec, f"{field}: ours {spec}, tritonclient's " \
                f"{their.get(field)}"
            compared += 1
    assert compared > 50  # ModelInferRequest alone has more than 15


def _shape(file: object) -> tuple[str, dict[str, tuple[int, int, int, str]],
                                  set[tuple[str, str, str, bool, bool]]]:
    """A file's package, every field of its messages (type names without the package)
    and its methods with their streaming."""
    package = file.package  # type: ignore[attr-defined]
    fields = {}
    for message in file.message_type:  # type: ignore[attr-defined]
        for name, (number, kind, label, type_name) in _fields(message, message.name).items():
            fields[name] = (number, kind, label, type_name.replace(f".{package}.", "."))
    methods = {(f"{s.name}.{m.name}", m.input_type.replace(f".{package}.", "."),
                m.output_type.replace(f".{package}.", "."), m.client_streaming,
                m.server_streaming)
               for s in file.service for m in s.method}  # type: ignore[attr-defined]
    return package, fields, methods


def test_the_reflection_protos_match_the_published_ones(tmp_path: Path) -> None:
    """Ours, v1 and v1alpha, against grpcio-reflection's v1alpha and grpclib's v1: the
    same package, service, methods (both ways streaming) and fields, number for number."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools missing (make setup installs it)")
    pytest.importorskip("grpc_reflection", reason="grpcio-reflection missing (make setup "
                        "installs it)")
    pytest.importorskip("grpclib", reason="grpclib missing (make setup installs it)")
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as alpha
    from grpclib.reflection.v1 import reflection_pb2 as v1

    for version, module in (("v1", v1), ("v1alpha", alpha)):
        theirs = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(theirs)
        ours = _compiled(tmp_path, REFLECTION[version])
        package, fields, methods = _shape(ours)
        assert package == f"grpc.reflection.{version}"
        assert (package, fields, methods) == _shape(theirs), version
        assert ("ServerReflection.ServerReflectionInfo", ".ServerReflectionRequest",
                ".ServerReflectionResponse", True, True) in methods
        assert len(fields) > 15
