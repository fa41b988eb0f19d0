"""Slim a Chalice deployment zip for Lambda (infra/package.sh runs it on every package).

- The AWS SDK comes with the Lambda runtime: ``botocore`` alone is 16 of the 21.6 MB Chalice
  zips (aws-xray-sdk pulls it in), and a bundled copy would shadow the runtime's. Dropped:
  ``boto3``, ``botocore``, ``s3transfer``, ``jmespath`` and their metadata.
- Every module is compiled ahead (``__pycache__/*.cpython-3XX.pyc``, unchecked-hash so a zip's
  2-second timestamps never invalidate them): a cold start no longer compiles the app and its
  libraries (1.15-1.3 s of CPU for ``import app`` without, issue 14).

Run by the Lambda Python (the bytecode is for its version):

    build/venv-3.13/bin/python -m infra.slim_zip build/package/deployment.zip
"""

from __future__ import annotations

import compileall
import py_compile
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath")
"""Top-level packages the Lambda Python runtime already has."""


def provided_by_runtime(name: str) -> bool:
    top = name.split("/", 1)[0]
    return any(top == package or top.startswith(f"{package}-") for package in RUNTIME_PROVIDED)


def slim(path: Path) -> tuple[int, int]:
    """Rewrite the zip in place; returns its size before and after."""
    before = path.stat().st_size
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not provided_by_runtime(m.filename)]
            archive.extractall(tree, members)
            modes = {m.filename: m.external_attr for m in members}
        compileall.compile_dir(tree, quiet=1, workers=0,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        slimmed = Path(scratch) / "deployment.zip"
        with zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for file in sorted(p for p in tree.rglob("*") if p.is_file()):
                name = file.relative_to(tree).as_posix()
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = modes.get(name, 0o644 << 16)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, file.read_bytes(), compresslevel=9)
        shutil.move(str(slimmed), path)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m infra.slim_zip DEPLOYMENT_ZIP", file=sys.stderr)
        return 2
    before, after = slim(Path(args[0]))
    print(f"slim_zip: {args[0]}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
