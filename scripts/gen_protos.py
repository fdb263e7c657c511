"""Generate the gRPC modules of the Open Inference Protocol from its .proto.

    python scripts/gen_protos.py             # rewrite them (make protos)
    python scripts/gen_protos.py --check     # exit 1 when the committed ones are stale

runtime/modelship_runtime/_proto/grpc_predict_v2.proto is the source; grpcio-tools (a dev
dependency: the image only needs grpcio and protobuf) writes ``grpc_predict_v2_pb2.py``,
its ``.pyi`` stub and ``grpc_predict_v2_pb2_grpc.py`` beside it. The modules are
committed so the runtime image needs no code generation; tests/runtime/test_grpc_stubs.py
runs the check.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "runtime"  # the import root: generated imports name modelship_runtime._proto
PROTO = Path("modelship_runtime/_proto/grpc_predict_v2.proto")
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Run protoc on the .proto with ``out`` as the output root; the files it wrote."""
    from grpc_tools import protoc

    args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {ROOT / PROTO}")
    return [out / PROTO.parent / name for name in GENERATED]


def stale() -> list[str]:
    """The committed generated modules that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [f.name for f in fresh
                if not (ROOT / PROTO.parent / f.name).exists()
                or (ROOT / PROTO.parent / f.name).read_bytes() != f.read_bytes()]


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
            shutil.copyfile(f, ROOT / PROTO.parent / f.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
