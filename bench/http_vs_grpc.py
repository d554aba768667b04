"""Decide as JSON over HTTP/1.1 (`--http-listen`) against Decide over gRPC, on one node in one run.

    python -m bench.http_vs_grpc            # 3 rounds of 8 s per transport, about a minute
    python -m bench.http_vs_grpc --quick    # a smoke run; --json for the report as JSON

One `edgewise edge serve --workers 1` on a synthetic bundle (20k users x 2k items by default) serving
both. The same Decide requests (the load generator's pool, `edgewise.bench.load.decide_requests`: with
consent, context and a seed item) go both ways: the serialized protobuf over gRPC, its canonical JSON
mapping (json_format) over HTTP. Closed loops with the same number of calls in flight: with h2load
(Debian's nghttp2-client; a C load generator that takes far less of the shared cores than Python
clients) one connection per call in flight, HTTP/1.1 keep-alive (`--h1`, what a CDN worker's pool or
nginx's upstream keepalive does) or HTTP/2 for gRPC, every call the first request of the pool; without
h2load, `--clients` processes of Python threads over the whole pool (gRPC threads share a channel per
process, HTTP threads keep a connection each; neither decodes answers) - there the Python HTTP client's
own cost on the shared cores shows, so prefer h2load. Rounds alternate gRPC and HTTP, and medians are
quoted: the machine's noise moves both alike.

Reported per transport: calls/s, client latency p50/p99, and the server's CPU per call from /proc
(supervisor and worker, less what they use idle: `edgewise.bench.node.ServerCpu`); the latency with
one call in flight (from this process, 1000 calls a round, rounds alternating); and, in this
process, the CPU time the encodings alone take per call (protobuf parse + serialize against
edge/json_mapping.py's parse and print + json.dumps, and json_format's own for reference, over the same
requests and the node's real answers to them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf import json_format

from edgewise.bench.load import LoadConfig, decide_requests, parse_mix
from edgewise.bench.node import _H2_DONE, _H2_RATE, _H2_UNIT, ServerCpu
from edgewise.bench.pipeline import prepare_bundle
from edgewise.edge.json_mapping import message_to_dict, parse_message
from edgewise.processes import Processes
from edgewise.v1 import personalizer_pb2 as pb

DECIDE_METHOD: Final = "/edgewise.v1.Personalizer/Decide"
DECIDE_PATH: Final = "/v1/decide"
START_TIMEOUT_S: Final = 180.0
CALL_TIMEOUT_S: Final = 5.0


def _log(message: str) -> None:
    print(f"[bench.http_vs_grpc] {message}", file=sys.stderr, flush=True)


def _identity(data: bytes) -> bytes:
    return data


def _client(kind: str, target: str, bodies: list[bytes], threads: int, seconds: float) -> dict[str, Any]:
    """One client process: `threads` closed loops for `seconds`; latencies (µs) of the calls answered
    200/OK, and the count of the others."""
    latencies: list[list[int]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]
    channel = grpc.insecure_channel(target) if kind == "grpc" else None

    def loop(index: int) -> None:
        mine, n = latencies[index], len(bodies)
        i = index * 7919
        if channel is not None:
            call = channel.unary_unary(
                DECIDE_METHOD, request_serializer=_identity, response_deserializer=_identity
            )
            start.wait()
            while time.monotonic() < stop_at[0]:
                body = bodies[i % n]
                i += 1
                t = time.perf_counter_ns()
                try:
                    call(body, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    errors[index] += 1
                    continue
                mine.append((time.perf_counter_ns() - t) // 1000)
            return
        host, _, port = target.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
        headers = {"Content-Type": "application/json"}
        start.wait()
        while time.monotonic() < stop_at[0]:
            body = bodies[i % n]
            i += 1
            t = time.perf_counter_ns()
            try:
                conn.request("POST", DECIDE_PATH, body, headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                conn.close()
                continue
            if response.status != 200:
                errors[index] += 1
                continue
            mine.append((time.perf_counter_ns() - t) // 1000)
        conn.close()

    workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.monotonic() + seconds
    start.wait()
    for w in workers:
        w.join(seconds + 2 * CALL_TIMEOUT_S)
    if channel is not None:
        channel.close()
    return {"latencies_us": [x for part in latencies for x in part], "errors": sum(errors)}


def _client_entry(args: tuple[str, str, list[bytes], int, float]) -> dict[str, Any]:
    return _client(*args)


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _load(
    pool: Any,
    kind: str,
    target: str,
    bodies: list[bytes],
    clients: int,
    concurrency: int,
    seconds: float,
    cpu: ServerCpu,
) -> dict[str, Any]:
    threads = max(1, concurrency // clients)
    jobs = [(kind, target, bodies, threads, seconds)] * clients
    before = cpu.sample()
    parts = pool.map(_client_entry, jobs)
    after = cpu.sample()
    latencies = [x for p in parts for x in p["latencies_us"]]
    ok = len(latencies)
    server = cpu.per_call(before, after, ok + sum(p["errors"] for p in parts))
    return {
        "calls_per_s": round(ok / seconds, 1),
        "ok": ok,
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": round(_percentile(latencies, 0.50) / 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) / 1000, 3),
        "server_us_per_call": server["us_per_call"],
        "server_cores_busy": server["cores_busy"],
    }


def _h2load(
    h2load: str, kind: str, target: str, body_file: Path, seconds: float, concurrency: int, cpu: ServerCpu
) -> dict[str, Any]:
    """One closed loop with h2load: `concurrency` connections, one call in flight on each (HTTP/1.1
    keep-alive for HTTP, one HTTP/2 stream per connection for gRPC), every call the same body."""
    cmd = [h2load, "-D", str(max(1, round(seconds))), "-c", str(concurrency), "-m", "1", "-t", "1"]
    cmd += ["-d", str(body_file)]
    if kind == "grpc":
        cmd += [
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"http://{target}{DECIDE_METHOD}",
        ]
    else:
        cmd += ["--h1", "-H", "content-type: application/json", f"http://{target}{DECIDE_PATH}"]
    before = cpu.sample()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    after = cpu.sample()
    finished, rate = _H2_DONE.search(done.stdout), _H2_RATE.search(done.stdout)
    if done.returncode != 0 or finished is None or rate is None:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    succeeded, failed = int(finished.group(4)), int(finished.group(5))
    took = float(rate.group(1)) * _H2_UNIT[rate.group(2)]
    server = cpu.per_call(before, after, succeeded + failed)
    return {
        "calls_per_s": round(succeeded / took, 1),
        "ok": succeeded,
        "errors": failed,
        "server_us_per_call": server["us_per_call"],
        "server_cores_busy": server["cores_busy"],
    }


def _one_in_flight(
    grpc_target: str,
    http_target: str,
    grpc_bodies: list[bytes],
    http_bodies: list[bytes],
    calls: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Latency with one call in flight, from this process: rounds alternating gRPC and HTTP."""
    host, _, port = http_target.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    seen: dict[str, list[tuple[float, float]]] = {"grpc": [], "http": []}
    with grpc.insecure_channel(grpc_target) as channel:
        call = channel.unary_unary(
            DECIDE_METHOD, request_serializer=_identity, response_deserializer=_identity
        )

        def over_grpc(i: int) -> None:
            call(grpc_bodies[i % len(grpc_bodies)], timeout=CALL_TIMEOUT_S)

        def over_http(i: int) -> None:
            conn.request("POST", DECIDE_PATH, http_bodies[i % len(http_bodies)], headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

        order = (("grpc", over_grpc), ("http", over_http))
        for r in range(rounds):
            for kind, one in order if r % 2 == 0 else order[::-1]:
                latencies = []
                for i in range(calls):
                    t = time.perf_counter_ns()
                    one(i)
                    latencies.append((time.perf_counter_ns() - t) // 1000)
                seen[kind].append((_percentile(latencies, 0.5), _percentile(latencies, 0.99)))
    conn.close()
    return {
        kind: {
            "p50_ms": round(statistics.median(p50 for p50, _ in runs) / 1000, 3),
            "p99_ms": round(statistics.median(p99 for _, p99 in runs) / 1000, 3),
        }
        for kind, runs in seen.items()
    }


def _codec_costs(requests: list[bytes], responses: list[bytes], repeat: int) -> dict[str, float]:
    """µs per call, in this process, of each transport's encoding work on the server side."""
    json_requests = [json_format.MessageToJson(pb.DecideRequest.FromString(r)).encode() for r in requests]
    decoded = [pb.DecideResponse.FromString(r) for r in responses]

    def timed(step: Any, items: Sequence[Any]) -> float:  # CPU time: less moved by other processes
        t = time.process_time()
        for _ in range(repeat):
            for item in items:
                step(item)
        return round(1e6 * (time.process_time() - t) / (repeat * len(items)), 1)

    def json_out(message: pb.DecideResponse) -> bytes:  # what the gateway does
        return json.dumps(message_to_dict(message), ensure_ascii=False, separators=(",", ":")).encode()

    def json_format_out(message: pb.DecideResponse) -> bytes:  # the same with json_format
        out = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()

    return {
        "protobuf_parse_request_us": timed(pb.DecideRequest.FromString, requests),
        "protobuf_serialize_response_us": timed(lambda m: m.SerializeToString(), decoded),
        "json_parse_request_us": timed(lambda b: parse_message(b, pb.DecideRequest), json_requests),
        "json_format_parse_request_us": timed(
            lambda b: json_format.Parse(b, pb.DecideRequest()), json_requests
        ),
        "json_print_response_us": timed(json_out, decoded),
        "json_format_print_response_us": timed(json_format_out, decoded),
        "request_bytes_protobuf": round(statistics.mean(len(r) for r in requests)),
        "request_bytes_json": round(statistics.mean(len(r) for r in json_requests)),
        "response_bytes_protobuf": round(statistics.mean(len(r) for r in responses)),
        "response_bytes_json": round(statistics.mean(len(json_out(m)) for m in decoded)),
    }


def run(
    rounds: int,
    seconds: float,
    concurrency: int,
    clients: int,
    users: int,
    items: int,
    h2load: str | None = None,
) -> dict[str, Any]:
    bundle, _, _ = prepare_bundle(None, users, items, 7)
    config = LoadConfig(concurrency=1, mix=parse_mix("decide=1"), users=users, items=items)
    grpc_bodies = decide_requests(config)[:512]
    http_bodies = [json_format.MessageToJson(pb.DecideRequest.FromString(b)).encode() for b in grpc_bodies]
    results: dict[str, Any] = {
        "bundle": f"{users} users x {items} items",
        "rounds": rounds,
        "seconds_per_load": seconds,
        "concurrency": concurrency,
        "clients": clients,
        "workers": 1,
        "load_generator": "h2load" if h2load else "python",
        "machine": {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
    }
    ctx = mp.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="edgewise-bench-http-") as tmp_name,
        Processes(Path(tmp_name) / "procs", {"PYTHONUNBUFFERED": "1"}, grace=10) as procs,
        ctx.Pool(clients) as pool,
    ):
        tmp = Path(tmp_name)
        edge = procs.start(
            "edge",
            [
                "edge", "serve", "--data", str(tmp / "data"), "--bundle", str(bundle.path),
                "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--workers", "1",
            ],
        )  # fmt: skip
        info = edge.wait_ready(START_TIMEOUT_S)
        grpc_target, http_target = str(info["address"]), str(info["http"])
        _log(f"edge at gRPC {grpc_target}, HTTP {http_target}")
        with grpc.insecure_channel(grpc_target) as channel:
            call = channel.unary_unary(
                DECIDE_METHOD, request_serializer=_identity, response_deserializer=_identity
            )
            responses = [call(b, timeout=CALL_TIMEOUT_S) for b in grpc_bodies[:64]]
        host, _, port = http_target.rpartition(":")
        check = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT_S)
        check.request("POST", DECIDE_PATH, http_bodies[0], {"Content-Type": "application/json"})
        answer = check.getresponse()
        if answer.status != 200:  # h2load counts any 2xx; gRPC's status is checked by the calls above
            raise RuntimeError(f"HTTP Decide answered {answer.status}: {answer.read()[:500]!r}")
        check.close()
        cpu = ServerCpu(int(info["pid"]))
        cpu.measure_idle()
        files = {"grpc": tmp / "decide.grpc", "http": tmp / "decide.json"}
        files["grpc"].write_bytes(b"\x00" + len(grpc_bodies[0]).to_bytes(4, "big") + grpc_bodies[0])
        files["http"].write_bytes(http_bodies[0])
        targets = {"grpc": (grpc_target, grpc_bodies), "http": (http_target, http_bodies)}

        def load(kind: str, duration: float) -> dict[str, Any]:
            target, bodies = targets[kind]
            if h2load:
                return _h2load(h2load, kind, target, files[kind], duration, concurrency, cpu)
            return _load(pool, kind, target, bodies, clients, concurrency, duration, cpu)

        for kind in ("grpc", "http"):
            load(kind, max(1.0, seconds / 4))  # warm-up
        runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "http": []}
        for r in range(rounds):
            for kind in ("grpc", "http") if r % 2 == 0 else ("http", "grpc"):
                figures = load(kind, seconds)
                _log(f"round {r + 1} {kind}: {json.dumps(figures)}")
                runs[kind].append(figures)
        results["one_in_flight"] = _one_in_flight(
            grpc_target, http_target, grpc_bodies, http_bodies, 1000 if seconds >= 4 else 200, 2 * rounds
        )
        procs.stop([edge])
    results["runs"] = runs
    for kind, loads in runs.items():
        results[kind] = {
            key: round(statistics.median(f[key] for f in loads if f.get(key) is not None), 3)
            for key in ("calls_per_s", "p50_ms", "p99_ms", "server_us_per_call")
            if any(f.get(key) is not None for f in loads)
        }
    g, h = results["grpc"], results["http"]
    results["http_vs_grpc"] = {
        "throughput_ratio": round(h["calls_per_s"] / g["calls_per_s"], 3) if g["calls_per_s"] else None,
        "server_cpu_ratio": round(h["server_us_per_call"] / g["server_us_per_call"], 3)
        if g["server_us_per_call"]
        else None,
        "p50_ratio": round(h["p50_ms"] / g["p50_ms"], 3) if g.get("p50_ms") else None,
    }
    results["codecs"] = _codec_costs(grpc_bodies[:64], responses, repeat=20)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    return results


def _format(r: dict[str, Any]) -> str:
    lines = [
        f"edge --workers 1, {r['bundle']}; closed loops of {r['concurrency']} calls in flight from "
        + (
            "h2load (one connection per call in flight)"
            if r["load_generator"] == "h2load"
            else f"{r['clients']} Python client processes"
        )
        + f"; {r['rounds']} alternating rounds of {r['seconds_per_load']} s; medians",
        f"{'':6} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server µs/call':>15}",
    ]
    for kind in ("grpc", "http"):
        f = r[kind]
        p50 = f"{f['p50_ms']:>8.3f}" if "p50_ms" in f else f"{'-':>8}"
        p99 = f"{f['p99_ms']:>8.3f}" if "p99_ms" in f else f"{'-':>8}"
        lines.append(f"{kind:6} {f['calls_per_s']:>9,.0f} {p50} {p99} {f['server_us_per_call']:>15,.1f}")
    ratio = r["http_vs_grpc"]
    lines.append(
        f"HTTP / gRPC: throughput x{ratio['throughput_ratio']}, server CPU per call "
        f"x{ratio['server_cpu_ratio']}, p50 x{ratio['p50_ratio']}"
    )
    one = r["one_in_flight"]
    lines.append(
        f"one call in flight: gRPC p50 {one['grpc']['p50_ms']} ms p99 {one['grpc']['p99_ms']} ms; "
        f"HTTP p50 {one['http']['p50_ms']} ms p99 {one['http']['p99_ms']} ms"
    )
    c = r["codecs"]
    lines.append(
        f"encodings in process, µs per call: protobuf parse {c['protobuf_parse_request_us']} + serialize "
        f"{c['protobuf_serialize_response_us']}; JSON parse {c['json_parse_request_us']} + print "
        f"{c['json_print_response_us']} (json_format's: {c['json_format_parse_request_us']} + "
        f"{c['json_format_print_response_us']}) "
        f"(bytes: request {c['request_bytes_protobuf']} vs "
        f"{c['request_bytes_json']}, response {c['response_bytes_protobuf']} vs {c['response_bytes_json']})"
    )
    lines.append(f"load average: {r['machine']['loadavg_start']} -> {r['machine']['loadavg_end']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_vs_grpc", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="one short round on a small bundle: a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per transport (default 3, quick 1)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load (default 8, quick 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument(
        "--h2load",
        default=shutil.which("h2load"),
        help="h2load binary (default: on PATH; '' for Python clients)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    seconds = args.duration if args.duration is not None else (1.0 if args.quick else 8.0)
    users, items = (2_000, 500) if args.quick else (args.users, args.items)
    result = run(rounds, seconds, args.concurrency, args.clients, users, items, args.h2load or None)
    print(json.dumps(result, indent=2) if args.json else _format(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
