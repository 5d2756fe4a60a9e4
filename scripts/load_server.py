#!/usr/bin/env python3
"""Bounded load test for a running `gorae serve`: for each concurrency level, N clients stream
completions for M seconds; prints aggregate generated tokens/s. Loopback only, standard library
only. Every client finishes its current request after the deadline, so a run lasts at most
M seconds plus one request.

    gorae serve MODEL --parallel 16 --port 8080 &
    python3 scripts/load_server.py --url http://127.0.0.1:8080 --clients 1,4,8,16 --seconds 20
"""

import argparse
import http.client
import ipaddress
import json
import socket
import threading
import time
import urllib.parse


def loopback_only(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    host = u.hostname or ""
    addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addrs or not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise SystemExit(f"refusing {url}: this script only targets loopback addresses")
    return host, u.port or 80


def one_request(host, port, body, headers, timeout):
    """Streams one completion; returns (completion tokens, seconds to first token)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("choices") and ttft is None and chunk["choices"][0].get("text"):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    finally:
        conn.close()
    return tokens, ttft


def run_level(host, port, n_clients, seconds, max_tokens, headers, model):
    deadline = time.perf_counter() + seconds
    results = []
    errors = []
    lock = threading.Lock()

    def client(i):
        k = 0
        while time.perf_counter() < deadline:
            body = {
                "prompt": f"Story {i}-{k}: Once upon a time, in a land far away,",
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": i * 1000 + k,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if model:
                body["model"] = model
            try:
                r = one_request(host, port, body, headers, timeout=seconds + 300)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - report and stop this client
                with lock:
                    errors.append(str(e))
                return
            k += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    ttfts = [r[1] for r in results if r[1] is not None]
    return {
        "clients": n_clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": elapsed,
        "tok_s": tokens / elapsed if elapsed > 0 else 0.0,
        "ttft": sum(ttfts) / len(ttfts) if ttfts else float("nan"),
        "errors": errors,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", default="1,4,8,16", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--api-key")
    ap.add_argument("--model", help="model id to send (default: none)")
    args = ap.parse_args()
    if args.seconds <= 0 or args.seconds > 600:
        raise SystemExit("--seconds must be in (0, 600]")
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    if not levels or any(n < 1 or n > 64 for n in levels):
        raise SystemExit("--clients must list levels between 1 and 64")
    host, port = loopback_only(args.url)
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'x1':>6} {'ttft_s':>7}")
    base = None
    failed = False
    for n in levels:
        r = run_level(host, port, n, args.seconds, args.max_tokens, headers, args.model)
        base = base or r["tok_s"]
        speedup = r["tok_s"] / base if base else float("nan")
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['seconds']:>8.1f} "
              f"{r['tok_s']:>8.1f} {speedup:>6.2f} {r['ttft']:>7.2f}", flush=True)
        for e in r["errors"][:3]:
            print(f"        error: {e}")
        failed = failed or bool(r["errors"])
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
