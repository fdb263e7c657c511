"""Generate the runtime's protobuf modules from the .proto files beside them.

    python scripts/gen_protos.py             # rewrite them (make protos)
    python scripts/gen_protos.py --check     # exit 1 when the committed ones are stale

The sources are in runtime/modelship_runtime/_proto: ``grpc_predict_v2.proto`` (the Open
Inference Protocol's service) and ``reflection_v1.proto``, ``reflection_v1alpha.proto``
(gRPC Server Reflection). grpcio-tools (a dev dependency: the image only needs protobuf)
writes each one's ``_pb2.py`` and ``.pyi`` stub beside it, and for the V2 service also
``grpc_predict_v2_pb2_grpc.py`` (grpcio stubs for users; the runtime serves reflection
itself and needs none for it). The modules are committed so the runtime image needs no
code generation; tests/runtime/test_grpc_stubs.py runs the check.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runtime"  # the import root: generated imports name modelship_runtime._proto
FOLDER = Path("modelship_runtime/_proto")
#: each .proto, and whether grpcio service stubs (``_pb2_grpc.py``) are made of it
PROTOS = (("grpc_predict_v2.proto", True), ("reflection_v1.proto", False),
          ("reflection_v1alpha.proto", False))


def generate(out: Path) -> list[Path]:
    """Run protoc on each .proto with ``out`` as the output root; the files it wrote."""
    from grpc_tools import protoc

    written = []
    for name, stubs in PROTOS:
        source = ROOT / FOLDER / name
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
                *([f"--grpc_python_out={out}"] if stubs else []), str(source)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {source}")
        stem = name.removesuffix(".proto")
        written += [out / FOLDER / f"{stem}_pb2.py", out / FOLDER / f"{stem}_pb2.pyi"]
        if stubs:
            written.append(out / FOLDER / f"{stem}_pb2_grpc.py")
    return written


def stale() -> list[str]:
    """The committed generated modules that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [f.name for f in fresh
                if not (ROOT / FOLDER / f.name).exists()
                or (ROOT / FOLDER / f.name).read_bytes() != f.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        if names:
            print(f"stale: {', '.join(names)} (run make protos)", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in generate(Path(tmp)):
            shutil.copyfile(f, ROOT / FOLDER / f.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
