"""CometBFT's ABCI messages for Python, generated from CometBFT's own `.proto` files.

`python -m stepbatch.abci.protos` (run by `scripts/bootstrap`) asks Go for the pinned CometBFT module
and the gogoproto module its protos import (`go mod download`, the same module cache `go install`
filled), and compiles the protos `tendermint/abci/types.proto` needs with grpcio-tools' protoc into
PROTO_DIR. `load()` puts PROTO_DIR on the import path and returns the `tendermint.abci.types_pb2`
module; nothing here encodes a message by hand.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys

COMETBFT_MODULE = "github.com/cometbft/cometbft"
COMETBFT_VERSION = "v0.38.17"
GOGOPROTO_MODULE = "github.com/cosmos/gogoproto"
PROTO_DIR = pathlib.Path(os.environ.get("STEPBATCH_PROTO_DIR") or pathlib.Path(sys.prefix) / "share" / "stepbatch"
                         / f"cometbft-{COMETBFT_VERSION}-proto")
SOURCES = ("tendermint/abci/types.proto", "tendermint/types/types.proto", "tendermint/types/params.proto",
           "tendermint/types/validator.proto", "tendermint/types/evidence.proto", "tendermint/crypto/keys.proto",
           "tendermint/crypto/proof.proto", "tendermint/version/types.proto")


class ProtoError(RuntimeError):
    """The ABCI messages are not generated (or cannot be): the message says how to fix it."""


def _module_dir(module: str, version: str) -> pathlib.Path:
    try:
        info = json.loads(subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], check=True,
                                         capture_output=True, text=True).stdout)
    except FileNotFoundError as err:
        raise ProtoError("generating the ABCI messages needs Go (`go` on PATH)") from err
    except subprocess.CalledProcessError as err:
        raise ProtoError(f"go mod download {module}@{version} failed: {err.stderr.strip()[-500:]}") from err
    return pathlib.Path(info["Dir"])


def _gogoproto_version(cometbft_dir: pathlib.Path) -> str:
    for line in (cometbft_dir / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == [GOGOPROTO_MODULE]:
            return parts[1]
    raise ProtoError(f"{cometbft_dir}/go.mod does not name {GOGOPROTO_MODULE}")


def generate(out: pathlib.Path = PROTO_DIR) -> pathlib.Path:
    """Compile the protos into `out` (a package tree `tendermint/…`, `gogoproto/…`)."""
    from grpc_tools import protoc

    cometbft = _module_dir(COMETBFT_MODULE, COMETBFT_VERSION)
    gogoproto = _module_dir(GOGOPROTO_MODULE, _gogoproto_version(cometbft))
    bundled = pathlib.Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{cometbft / 'proto'}", f"-I{gogoproto}", f"-I{bundled}", f"--python_out={out}",
            "gogoproto/gogo.proto", *SOURCES]
    if protoc.main(args) != 0:
        raise ProtoError(f"protoc failed on CometBFT {COMETBFT_VERSION}'s protos")
    for package in {pathlib.Path(source).parent for source in (*SOURCES, "gogoproto/gogo.proto")}:
        for level in (package, *package.parents):
            if str(level) != ".":
                (out / level / "__init__.py").touch()
    return out


def load():
    """The generated `tendermint.abci.types_pb2` module."""
    if not (PROTO_DIR / "tendermint" / "abci" / "types_pb2.py").exists():
        raise ProtoError(f"the ABCI messages of CometBFT {COMETBFT_VERSION} are not generated; run "
                         f"scripts/bootstrap (or `python -m stepbatch.abci.protos`)")
    if str(PROTO_DIR) not in sys.path:
        sys.path.insert(0, str(PROTO_DIR))
    return importlib.import_module("tendermint.abci.types_pb2")


if __name__ == "__main__":
    try:
        print(f"ABCI messages of CometBFT {COMETBFT_VERSION} generated in {generate()}")
    except ProtoError as err:
        print(f"stepbatch: {err}", file=sys.stderr)
        sys.exit(1)
