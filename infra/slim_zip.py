"""Slim a Chalice deployment zip for Lambda (infra/package.sh runs it on every package).

What leaves the zip, and why (issue 14: 22.0 MB as Chalice builds it):

- **The AWS SDK and its dependencies** (``RUNTIME_PROVIDED``): the Lambda Python runtime has
  them, and a bundled ``botocore`` (16 MB unpacked, pulled in by aws-xray-sdk) would shadow the
  runtime's copy. ``urllib3``, ``dateutil`` and ``six`` come in only as botocore's dependencies.
- **Parts of libraries no code path of ours reaches** (``UNUSED``, each with its reason).
  ``tests/infra/test_package.py`` unpacks the slimmed zip and, in a fresh interpreter that sees
  nothing else, imports every module of the app and runs each function's handler, so a part
  that is in use cannot silently go.
- **pydantic and PyYAML** (``VALIDATION_ONLY``): the config is read and validated where it is
  accepted; the packaged config file is validated here and replaced by its canonical JSON
  (``canonical_config``), which the Lambdas build without pydantic or yaml. A YAML config reaching
  a Lambda (VMPOOL_CONFIG, or an object put in the config bucket by hand) is refused with a
  message naming config-push.
- **What only tools read**: C sources, type stubs (``*.pyi``, ``py.typed``, ``*-stubs``), a wheel's
  ``RECORD``/``WHEEL``/``INSTALLER``/``REQUESTED``, and ``METADATA``'s long description (its
  headers stay: redis asks ``importlib.metadata`` for its version; licences stay).
- **The X-Ray SDK and wrapt, in a stage without tracing** (``TRACING_ONLY``, ``--without-tracing``:
  infra/package.sh gives it when the stage's ``POWERTOOLS_TRACE_DISABLED`` is true, as dev's is):
  only Powertools' Tracer imports them, which such a stage never makes
  (chalicelib/observability.py ``make_tracer``; were tracing turned on without a new package, it
  warns and stays off). Until 2026-12-07 dev carried them (205 KB zipped) for nothing.
- **Debug symbols of C extensions**: the manylinux wheels of hiredis and wrapt (and PyYAML's,
  before it left) ship their ``.so`` files unstripped (4.2 MB, 1.2 MB zipped, with PyYAML's);
  ``strip --strip-unneeded`` (binutils) keeps the exported symbols Python loads them by and drops
  the rest (0.6 MB, 0.25 zipped). Without
  ``strip`` on the PATH they stay as they are (with a warning).
- **Library sources**: every module is compiled ahead for the runtime's Python, so a cold start
  never compiles (1.15-1.3 s of CPU for ``import app`` without bytecode). Libraries ship
  bytecode only (``redis/client.pyc`` in place of ``redis/client.py``: Python imports such
  sourceless modules; a traceback through them shows file and line, not the line's text). The
  app's own code (``OWN_CODE``) keeps its sources beside ``__pycache__/*.cpython-3XX.pyc``
  (unchecked-hash, so the zip's timestamps never invalidate them) for readable tracebacks.
- **The app's docstrings, from its bytecode** (``own_bytecode``): the source beside each module
  keeps them for whoever reads it; no function reads a ``__doc__`` of ours. Modules' and
  functions' docstrings were about a fifth of the app's bytecode (185 KB of the zip on
  2026-12-07, as much as the app had grown in a day); classes keep theirs (a dataclass without
  one computes its signature for one at every import).

Run by the Lambda Python (the bytecode is for its version; a sourceless module only imports on
that version, which is the one the template's runtime names, infra/package.sh):

    build/venv-3.13/bin/python -m infra.slim_zip build/package/deployment.zip --config chalicelib/vmpool.yaml \
        [--from my-vmpool.yaml]     # another file packaged as chalicelib/vmpool.yaml
        [--without-tracing]         # a stage without X-Ray tracing: no X-Ray SDK
"""

from __future__ import annotations

import ast
import importlib.util
import marshal
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VALIDATION_ONLY = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml", "_yaml", "PyYAML",
                   "pyyaml")
"""pydantic, PyYAML and what only they use: the config is read and validated where it is accepted
(packaging, just below, and ``make config-push``), and the Lambdas build it from its canonical
JSON without either (chalicelib/config.py). pydantic is 2.5 MB zipped, which the 5 MB zip could
not hold; PyYAML 0.24 MB (libyaml's loader 0.15 of it), which only ever parsed a YAML config that
the missing pydantic then refused: a Lambda refuses it before parsing now, with the same advice."""

RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "python_dateutil", "six")
"""Top-level modules and distributions the Lambda Python runtime already has (the AWS SDK)."""

_POWERTOOLS_UNUSED = ("auth_alpha", "batch", "circuit_breaker", "data_classes", "data_masking", "feature_flags",
                      "idempotency", "kafka", "metadata", "parser", "streaming", "validation")

UNUSED: dict[str, str] = {
    "aws_lambda_powertools/event_handler/": "Powertools' HTTP resolvers and Swagger UI: Chalice routes the API",
    **{f"aws_lambda_powertools/utilities/{name}/": "a Powertools utility vmpool does not use (it uses Logger, "
       "EphemeralMetrics, Tracer and parameters)" for name in _POWERTOOLS_UNUSED},
    "aws_lambda_powertools/utilities/serialization.py": "Powertools' base64 helpers, unused",
    **{f"redis/commands/{name}/": "a Redis module's commands (RedisJSON, Search, ...), imported only when called"
       for name in ("bf", "json", "search", "timeseries", "vectorset")},
    "redis/multidb/": "redis-py's multi-database failover client, unused (ElastiCache fails over itself)",
    "redis/asyncio/multidb/": "the same, asyncio",
    **{f"redis/asyncio/{name}": "redis-py's asyncio client, which vmpool never runs (chalicelib/deferred_imports.py: "
       "its package stays, for redis.commands.core's import of redis.asyncio.observability)"
       for name in ("client.py", "cluster.py", "connection.py", "keyspace_notifications.py", "lock.py",
                    "maint_notifications.py", "retry.py", "sentinel.py", "utils.py", "_himport_exec.py", "http/")},
    "redis/ocsp.py": "OCSP stapling checks, only with pyOpenSSL and ssl_validate_ocsp",
    "ldap3/protocol/schemas/": "ldap3's offline server schemas, only read with get_info=OFFLINE_* (we use NONE)",
    **{f"pyVmomi/_typeinfo_{name}.py": "type info of a vSphere API vmpool does not call (pyVmomi loads each "
       "only if present): ESX Agent Manager, storage policy/monitoring, FCDs, vSAN health"
       for name in ("eam", "pbm", "sms", "vslm", "vsanhealth")},
    "vsanapiutils.py": "pyvmomi's vSAN helpers, unused",
    "vsanmgmtObjects.py": "pyvmomi's vSAN types, unused",
    "pyVim/": "pyvmomi's connection helpers: the vSphere provider builds its own SoapStubAdapter",
    **{f"dns/{name}": "dnspython's zones, DNSSEC, async resolver and QUIC: the DNS plugins (chalicelib/dns) send "
       "updates and queries synchronously over UDP and TCP, which import none of these"
       for name in ("zone.py", "zonefile.py", "zonetypes.py", "versioned.py", "btree.py", "btreezone.py", "dnssec.py",
                    "dnssecalgs/", "asyncresolver.py", "_asyncio_backend.py", "_trio_backend.py", "quic/_asyncio.py",
                    "quic/_common.py", "quic/_sync.py", "quic/_trio.py", "win32util.py", "e164.py", "grange.py")},
    **{f"tzdata/zoneinfo/{name}": "the zone database's text forms and tables: zoneinfo reads the compiled zone "
       "files only (and tzdata/zones for available_timezones)"
       for name in ("tzdata.zi", "iso3166.tab", "zone.tab", "zone1970.tab", "zonenow.tab", "leapseconds")},
    **{f"aws_xray_sdk/ext/{name}/": "X-Ray's patches of libraries neither the zip nor the runtime has: patch_all "
       "imports each only to find its library missing, an ImportError it ignores either way"
       for name in ("aiobotocore", "aiohttp", "bottle", "django", "flask", "flask_sqlalchemy", "httpx", "mysql",
                    "pg8000", "psycopg", "psycopg2", "pymongo", "pymysql", "pynamodb", "requests", "sqlalchemy",
                    "sqlalchemy_core")},
}
"""Paths (a folder when ending in ``/``) of libraries' parts no code path of vmpool imports."""

TRACING_ONLY = ("aws_xray_sdk", "wrapt")
"""The X-Ray SDK and what only it imports: Powertools' Tracer needs them, a stage without tracing
never makes one (``--without-tracing``)."""

WHEEL_BOOKKEEPING = ("RECORD", "WHEEL", "INSTALLER", "REQUESTED")
OWN_CODE = ("app.py", "chalicelib/")
"""The app's own modules: shipped with their sources (tracebacks show the code)."""


def dropped(name: str, names: frozenset[str] = frozenset(), tracing: bool = True) -> str | None:
    """Why the zip member ``name`` (of a zip holding ``names``, for a stage with or without
    ``tracing``) leaves the zip, or None when it stays."""
    top = name.split("/", 1)[0]
    if _of_modules(top, RUNTIME_PROVIDED):
        return "provided by the Lambda runtime"
    if not tracing and _of_modules(top, TRACING_ONLY):
        return "tracing only (the stage does not trace)"
    if _of_modules(top, VALIDATION_ONLY, extension_modules=True):
        return "validation only (the packaged config is validated here, below)"
    if any(name == path or (path.endswith("/") and name.startswith(path)) for path in UNUSED):
        return "unused"
    base = name.rsplit("/", 1)[-1]
    if name.endswith((".pyi", "/py.typed")) or top.endswith("-stubs"):
        return "type stubs"
    if name.endswith((".c", ".h")):
        return "C sources (their extensions are built)"
    if top.endswith(".dist-info") and base in WHEEL_BOOKKEEPING:
        return "wheel bookkeeping"
    if name.endswith(".pyc") and ("__pycache__/" in name or name[:-1] in names):
        return "stale bytecode (compiled again below)"
    # A library's module.pyc without its module.py: a zip slimmed already (compile_tree checks
    # that it is this Python's). Before, it was dropped as stale, and slimming a slimmed zip again
    # left every library without its code (4.6 MB -> 2.0 MB, no function could import).
    return None


def _of_modules(top: str, modules: tuple[str, ...] | frozenset[str], extension_modules: bool = False) -> bool:
    """Whether a zip's top-level entry ``top`` belongs to one of ``modules``: the package, the
    module file, its ``<name>-<version>.dist-info``; with ``extension_modules``, also its
    ``<name>.<abi>.so`` files."""
    separators = ("-", ".") if extension_modules else ("-",)
    prefixes = tuple(f"{module}{separator}" for module in modules for separator in separators)
    return any(top in (module, f"{module}.py") for module in modules) or top.startswith(prefixes)


def _own(relative: str) -> bool:
    return relative in OWN_CODE or relative.startswith(tuple(p for p in OWN_CODE if p.endswith("/")))


def compile_tree(tree: Path) -> None:
    """Own code: ``__pycache__`` bytecode beside the sources. Libraries: ``module.pyc`` in place
    of ``module.py`` (a file that does not compile keeps its source). A library's bytecode already
    there without its source (a zip slimmed before) must be this Python's: another's would not
    import in the runtime this Python names."""
    foreign = sorted(path.relative_to(tree).as_posix() for path in tree.rglob("*.pyc")
                     if not path.with_suffix(".py").exists() and path.read_bytes()[:4] != importlib.util.MAGIC_NUMBER)
    if foreign:
        raise SystemExit(f"slim_zip: {foreign[0]} (and {len(foreign) - 1} more) is bytecode of another Python than "
                         f"{sys.version_info.major}.{sys.version_info.minor}, without its source: this zip was slimmed "
                         "by another Python; package the stage again (infra/package.sh)")
    for path in sorted(tree.rglob("*.py")):
        relative = path.relative_to(tree).as_posix()
        if _own(relative):
            continue
        try:
            py_compile.compile(str(path), cfile=str(path.with_suffix(".pyc")), dfile=relative, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except py_compile.PyCompileError:
            continue
        path.unlink()
    for own in OWN_CODE:
        target = tree / own
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target] if target.is_file() else []:
            pyc = Path(importlib.util.cache_from_source(str(path)))
            pyc.parent.mkdir(exist_ok=True)
            pyc.write_bytes(own_bytecode(path.read_bytes(), path.relative_to(tree).as_posix()))


def _without_docstrings(module: ast.Module) -> ast.Module:
    """``module`` without its own docstring and its functions' (a body left empty gets a ``pass``
    on the docstring's line). Classes keep theirs. Every other node keeps its line and column,
    so a traceback points at the same line of the shipped source."""
    for node in ast.walk(module):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(
                node, clean=False) is not None:
            docstring = node.body[0]
            node.body[0:1] = [] if len(node.body) > 1 else [ast.copy_location(ast.Pass(), docstring)]
    return module


def own_bytecode(source: bytes, relative: str) -> bytes:
    """The ``.pyc`` of one of the app's modules (``relative``: its path in the zip, the file name
    tracebacks show): compiled without its modules' and functions' docstrings, unchecked-hash
    (PEP 552: flags 0b01, the source's hash; the zip's timestamps never invalidate it)."""
    code = compile(_without_docstrings(ast.parse(source, relative)), relative, "exec", dont_inherit=True)
    flags = (0b01).to_bytes(4, "little")
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def canonical_config(tree: Path, member: str, source: Path | None = None) -> None:
    """Validate the packaged config file ``member`` (the stage's ``VMPOOL_CONFIG_FILE``), or the
    file ``source`` in its place (the ``VMPOOL_CONFIG_FILE`` packaging was given), and write its
    canonical JSON as ``member``: the Lambdas build it without pydantic or yaml
    (chalicelib/config.py ``from_text``). JSON is YAML, so the file stays readable as YAML. An
    invalid config fails the package with every problem listed."""
    from chalicelib import config as config_module

    path = tree / member
    origin = source or path
    name = str(source) if source else member
    try:
        text = config_module.read_config_file(origin) if source else path.read_text()
    except OSError as error:
        where = f"the config {source}" if source else f"the packaged config {member} is not in the zip"
        raise SystemExit(f"slim_zip: {where}: {error.strerror}") from None
    try:
        config = config_module.from_text(text, name, base_dir=origin.parent)
    except config_module.ConfigError as error:
        raise SystemExit(f"slim_zip: the packaged config {name} is not valid:\n{error}") from None
    for warning in config.warnings:  # logged again by every function that loads it
        print(f"slim_zip: warning: {name}: {warning}", file=sys.stderr)
    from infra.shipped_config import shipping_problems

    body = config_module.canonical_json(config)
    # No secret inline in the zip (readable by whoever may read the deploy bucket or the function's
    # code), CA files carried, within the 16 MiB a function reads.
    problems = shipping_problems(config, body)
    if problems:
        raise SystemExit(f"slim_zip: the packaged config {name} cannot be shipped to the functions; nothing "
                         "packaged:\n  " + "\n  ".join(problems))
    path.write_text(body)


def trim_metadata(tree: Path) -> None:
    """Each wheel's ``METADATA`` without its long description (the README after the headers):
    ``importlib.metadata`` reads the headers (name, version, entry points' owner) and nothing
    in the zip reads the description."""
    for metadata in sorted(tree.glob("*.dist-info/METADATA")):
        text = metadata.read_text(encoding="utf-8")
        headers, blank, _description = text.partition("\n\n")
        if blank:
            metadata.write_text(headers + "\n", encoding="utf-8")


def strip_extensions(tree: Path) -> None:
    """Drop the debug symbols of every C extension (``strip --strip-unneeded``)."""
    libraries = sorted(str(p) for p in tree.rglob("*.so*") if p.is_file())
    strip = shutil.which("strip")
    if not libraries:
        return
    if strip is None:
        print("slim_zip: no strip (binutils) on the PATH: C extensions keep their debug symbols", file=sys.stderr)
        return
    subprocess.run([strip, "--strip-unneeded", *libraries], check=True)


def slim(path: Path, config_member: str | None = None, config_source: Path | None = None,
         tracing: bool = True) -> tuple[int, int]:
    """Rewrite the zip in place (``config_member``: the packaged config, written as canonical JSON,
    from ``config_source`` when given; without ``tracing``, no X-Ray SDK); returns its size before
    and after."""
    before = path.stat().st_size
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        with zipfile.ZipFile(path) as archive:
            names = frozenset(archive.namelist())
            members = [m for m in archive.infolist() if dropped(m.filename, names, tracing) is None]
            archive.extractall(tree, members)
            modes = {m.filename: m.external_attr for m in members}
        if config_member:
            try:
                canonical_config(tree, config_member, config_source)
            except SystemExit:  # Chalice's zip holds the config as written: no zip is left to deploy
                path.unlink()
                raise
        compile_tree(tree)
        trim_metadata(tree)
        strip_extensions(tree)
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
    tracing = "--without-tracing" not in args
    args = [arg for arg in args if arg != "--without-tracing"]
    usage = ("usage: python -m infra.slim_zip DEPLOYMENT_ZIP [--config PACKAGED_CONFIG_FILE [--from CONFIG_FILE]] "
             "[--without-tracing]")
    flags = args[1::2]
    if len(args) not in (1, 3, 5) or flags != ["--config", "--from"][:len(flags)]:
        print(usage, file=sys.stderr)
        return 2
    before, after = slim(Path(args[0]), args[2] if len(args) > 1 else None, Path(args[4]) if len(args) == 5 else None,
                         tracing)
    print(f"slim_zip: {args[0]}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
