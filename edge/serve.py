"""`edgewise edge serve`: a standalone edge node serving one data directory.

Loads `--bundle` into the store at start (skipped when that exact bundle is already loaded) and again
on SIGHUP; an invalid bundle is refused with a message naming file, record and field, and the last good
snapshot keeps serving. SIGTERM / SIGINT: health NOT_SERVING, drain in-flight calls, exit 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edgewise.core.pipeline import Pipeline
from edgewise.core.store import Store, StoreError
from edgewise.edge.logs import log
from edgewise.edge.server import build_server
from edgewise.edge.servicer import PersonalizerServicer
from edgewise.sync.bundle import BundleError, load_bundle
from edgewise.sync.snapshot import apply_bundle

__all__ = ["add_arguments", "load_bundle_file", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="data directory of this node's LMDB store")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle directory to load at start and on SIGHUP (an invalid one is refused; the last good "
        "snapshot keeps serving)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:50051", help="HOST:PORT to serve gRPC on; port 0 picks a free port"
    )
    parser.add_argument("--threads", type=int, default=8, help="gRPC handler threads (default 8)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds to drain in-flight calls on shutdown"
    )
    parser.add_argument(
        "--map-size-mb",
        type=int,
        default=8192,
        help="LMDB map size in MiB (an upper bound, not an allocation)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="once serving, write {address, port, pid, snapshot_version} as JSON here (for scripts)",
    )


def _manifest_digest(bundle_dir: Path) -> str:
    try:
        return hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def load_bundle_file(store: Store, bundle_dir: Path) -> bool:
    """Validate and apply a bundle; log the outcome; False (and nothing changed) when it is refused."""
    digest = _manifest_digest(bundle_dir)
    current = store.snapshot_info()
    if digest and current.get("manifest_sha256") == digest:
        log("bundle_already_loaded", bundle=str(bundle_dir), version=current.get("version"))
        return True
    started = time.monotonic()
    try:
        bundle = load_bundle(bundle_dir)
        info = apply_bundle(store, bundle, manifest_sha256=digest)
    except BundleError as exc:
        log(
            "bundle_refused",
            level="error",
            bundle=str(bundle_dir),
            error=str(exc),
            serving_version=current.get("version"),
        )
        return False
    except StoreError as exc:
        log("bundle_not_applied", level="error", bundle=str(bundle_dir), error=str(exc))
        return False
    log(
        "bundle_loaded",
        bundle=str(bundle_dir),
        version=info["version"],
        items=info["items"],
        profiles=info["profiles"],
        seconds=round(time.monotonic() - started, 3),
    )
    return True


def _write_ready_file(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    try:
        store = Store(args.data, map_size=args.map_size_mb << 20)
    except StoreError as exc:
        log("store_unavailable", level="error", error=str(exc))
        return 2
    if args.bundle is not None:
        load_bundle_file(store, args.bundle)
    if not store.has_snapshot():
        log(
            "no_snapshot",
            level="error",
            data=str(args.data),
            error="nothing to serve: no snapshot in the data directory and no valid --bundle",
        )
        store.close()
        return 2

    pipeline = Pipeline()
    with store.read() as view:
        pipeline.state(view)  # decode the snapshot before reporting SERVING
    try:
        edge = build_server(PersonalizerServicer(store, pipeline), args.listen, threads=args.threads)
    except OSError as exc:
        log("listen_failed", level="error", error=str(exc))
        store.close()
        return 2

    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)

    edge.server.start()
    edge.set_serving(True)
    host = args.listen.rsplit(":", 1)[0]
    address = f"{host}:{edge.port}"
    version = store.version()
    log("serving", address=address, snapshot_version=version, pid=os.getpid())
    if args.ready_file is not None:
        _write_ready_file(
            args.ready_file,
            {"address": address, "port": edge.port, "pid": os.getpid(), "snapshot_version": version},
        )
    while not stop.wait(0.2):
        if reload.is_set():
            reload.clear()
            if args.bundle is None:
                log("reload_ignored", level="warning", error="SIGHUP without --bundle: nothing to reload")
            else:
                load_bundle_file(store, args.bundle)
                with store.read() as view:
                    pipeline.state(view)
    log("stopping", grace_seconds=args.grace)
    edge.stop(args.grace)
    store.close()
    log("stopped")
    return 0
