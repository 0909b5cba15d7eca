"""Regenerate the committed Python stubs of the protos in this directory (grpcio-tools, the `dev` extra).

    python protos/generate.py          # writes adapters/salesforce/proto/pubsub_api_pb2*.py

The proto is mapped onto the package path (`-I adapters/salesforce/proto=protos/salesforce`), so the
generated gRPC module imports its message module by its package name and needs no patching.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "adapters/salesforce/proto"


def main() -> int:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PACKAGE}={ROOT / 'protos' / 'salesforce'}", f"-I{include}",
            f"--python_out={ROOT}", f"--grpc_python_out={ROOT}", f"--pyi_out={ROOT}",
            f"{PACKAGE}/pubsub_api.proto"]
    code = protoc.main(args)
    if code == 0:
        print(f"generated {PACKAGE}/pubsub_api_pb2.py, pubsub_api_pb2_grpc.py, pubsub_api_pb2.pyi")
    return code


if __name__ == "__main__":
    sys.exit(main())
