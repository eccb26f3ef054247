"""Regenerate the Python stubs in protos/ from the .proto files beside them.

    python scripts/gen_protos.py            # rewrite protos/*_pb2*.py
    python scripts/gen_protos.py --out DIR  # write elsewhere (the freshness test does)

protoc writes `import model_config_pb2`, a top-level import; the stubs live in
the `kairos.protos` package, so imports between them are made relative.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILES = ["model_config.proto", "grpc_service.proto"]


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # model_config.proto declares no service: its empty gRPC module is noise.
    (out_dir / "model_config_pb2_grpc.py").unlink(missing_ok=True)
    written = sorted(out_dir.glob("*_pb2*.py*"))
    for path in written:
        text = re.sub(r"^import (\w+_pb2)", r"from . import \1", path.read_text(), flags=re.M)
        path.write_text(text)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
