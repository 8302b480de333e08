"""Build hook: compile the etcd wire protocol (.proto) into Python stubs.

The stubs are generated, never committed. A wheel gets them in its build directory; an
editable install (`pip install -e .`) gets them next to the .proto files in the source tree,
where .gitignore keeps them out of git.
"""
from __future__ import annotations

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


def compile_protos(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # build-time dependency (pyproject [build-system])
    import grpc_tools

    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "server" / "proto").rglob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under server/proto")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + " ".join(protos))


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        compile_protos(ROOT if self.editable_mode else pathlib.Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithProtos})
