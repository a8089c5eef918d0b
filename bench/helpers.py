#!/usr/bin/env python3
"""Helpers for bench/run (standard library only; openssl for the RS256 key).

  helpers.py ports N                      N free loopback TCP ports, one a line
  helpers.py jwt DIR ISSUER AUDIENCE      RSA-2048 key, DIR/jwks.json, prints an RS256 token
  helpers.py cpu PID...                   CPU seconds (user+system) of the processes, summed
  helpers.py rss PID...                   resident memory of the processes, KiB, summed
  helpers.py idle HOST PORT N PIDS HDRS   open N keep-alive connections, one request each,
                                          hold them idle; print RSS before/after as JSON
  helpers.py line < run.json               one run's summary line
  helpers.py report WORKDIR OUTDIR        results/*.json -> side-by-side.md, latency.dat
"""

import base64
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def cmd_jwt(out, issuer, audience):
    key = os.path.join(out, "rs256.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    mod = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True, text=True).stdout
    n = bytes.fromhex(mod.strip().split("=", 1)[1])
    kid = "bench-1"
    jwks = {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64url(n), "e": b64url((65537).to_bytes(3, "big"))}]}
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    claims = {"iss": issuer, "aud": audience, "sub": "doctor-7", "roles": ["doctor"], "residency": "EU", "iat": now, "nbf": now - 60, "exp": now + 86400}
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(), check=True, capture_output=True).stdout
    print(signing_input + "." + b64url(sig))


def proc_pids(pids):
    """The processes and their children (nginx workers are children of the master)."""
    out = []
    for p in pids:
        p = int(p)
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in proc_pids(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except OSError:
            pass
    return total / tick


def rss_kib(pids):
    total = 0
    for p in proc_pids(pids):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cmd_idle(host, port, n, pids, headers):
    n = int(n)
    pids = pids.split(",")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 256)), hard))
    time.sleep(0.5)
    before = rss_kib(pids)
    lines = [h.strip() for h in headers.split("\n") if h.strip()]
    if not any(h.lower().startswith("host:") for h in lines):
        lines.insert(0, f"Host: {host}")
    req = "GET /api/clinical/patients/42/vitals HTTP/1.1\r\n" + "".join(h + "\r\n" for h in lines)
    req = (req + "\r\n").encode()
    conns, statuses = [], {}
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head else "closed"
        statuses[status] = statuses.get(status, 0) + 1
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(pids)
    # Still open? (a connection the server closed reads b"" at once)
    open_now = 0
    for s in conns:
        s.setblocking(False)
        try:
            open_now += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            open_now += 1
        s.close()
    print(json.dumps({"connections": n, "still_open": open_now, "statuses": statuses, "rss_before_kib": before, "rss_after_kib": after,
                      "bytes_per_connection": round((after - before) * 1024 / n)}))


def cmd_line():
    r = json.loads(sys.stdin.readline())
    L = r["latency_us"]
    print(f"   {r['target']:<20} {r['rps']:>9,.0f} req/s  p50 {L['50']} µs  p99 {L['99']} µs  p99.9 {L['99.9']} µs  "
          f"CPU {r['cpu_us_per_req']:.1f} µs/req ({r['cpu_util'] * 100:.0f}% of a core)  non-2xx {r['errors_status']}  load {r['load']}")


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def cmd_report(work, out):
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    runs = []
    with open(os.path.join(work, "runs.jsonl")) as f:
        for line in f:
            runs.append(json.loads(line))
    targets = meta["targets"]  # [{key, label}]
    by = {t["key"]: [r for r in runs if r["target"] == t["key"]] for t in targets}

    def med(key, field):
        vals = [r[field] for r in by[key]]
        return statistics.median(vals) if vals else float("nan")

    def med_pct(key, p):
        vals = [r["latency_us"][p] for r in by[key]]
        return statistics.median(vals) if vals else float("nan")

    base = "nginx"
    full = meta["full_key"]
    rows = []
    for t in targets:
        k = t["key"]
        if not by[k]:
            continue
        rps = med(k, "rps")
        rows.append({
            "key": k, "label": t["label"], "rps": rps,
            "ratio": rps / med(base, "rps") if by[base] else float("nan"),
            "p50": med_pct(k, "50"), "p99": med_pct(k, "99"), "p999": med_pct(k, "99.9"),
            "cpu_us": med(k, "cpu_us_per_req"), "cpu_util": med(k, "cpu_util"),
            "non2xx": sum(r["errors_status"] for r in by[k]), "sockerr": sum(r["errors_connect"] + r["errors_read"] + r["errors_write"] + r["errors_timeout"] for r in by[k]),
        })
    # Per-round ratio (same-round runs share the machine's noise).
    rounds = sorted({r["round"] for r in runs})
    per_round = []
    for rd in rounds:
        n = [r for r in runs if r["round"] == rd and r["target"] == base]
        p = [r for r in runs if r["round"] == rd and r["target"] == full]
        if n and p:
            per_round.append(p[0]["rps"] / n[0]["rps"])

    ratio = next((r["ratio"] for r in rows if r["key"] == full), float("nan"))
    lines = []
    w = lines.append
    w("# Side by side: Portcullis and nginx, one worker each, same load")
    w("")
    w(f"Measured {meta['date']} on `{meta['host']}` ({meta['cpus']} cores, {meta['cpu_model']}), `bench/run` "
      f"({meta['rounds']} round(s), each target {meta['duration']} s of `{meta['wrk_cmd']}` after a {meta['warmup']} s warm-up).")
    w("")
    w(f"**Load average before the run: {meta['load_before']}; after: {meta['load_after']}.** "
      "The machine is shared (other builds were running), so absolute figures are noisy; "
      "the ratio and the CPU µs per request (the server's own CPU time / requests) are the steadier figures.")
    w("")
    w(f"**Portcullis (full chain) / nginx (with its policies): {ratio:.2f}×** requests/s"
      + (f" (per round: {', '.join(f'{x:.2f}' for x in per_round)})" if len(per_round) > 1 else "") + ".")
    w("")
    w("| target | req/s | × nginx | p50 | p99 | p99.9 | server CPU µs/req | server CPU use | non-2xx | socket errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        w(f"| {r['label']} | {r['rps']:,.0f} | {r['ratio']:.2f} | {fmt_us(r['p50'])} | {fmt_us(r['p99'])} | {fmt_us(r['p999'])} | "
          f"{r['cpu_us']:.1f} | {r['cpu_util'] * 100:.0f}% | {r['non2xx']} | {r['sockerr']} |")
    w("")
    w("Medians over rounds. *Server CPU use* is the server's CPU seconds / wall seconds of the run: "
      "near 100% means the one core it was given was the bottleneck; well below means something else "
      "(the load generator, the upstream, other processes on the machine) limited it.")
    w("")
    chain = meta.get("chain", [])
    pc = [r for r in rows if r["key"] != base]  # full chain first, router only last
    if len(pc) == len(chain) + 1 and chain:
        w("Each policy's share in the real proxy: the server CPU per request with the policy, minus without it "
          "(the next shorter chain), medians; noisy when the machine is shared.")
        w("")
        w("| policy added to the chain | CPU µs/req added | req/s without → with |")
        w("|---|---:|---:|")
        for i in range(len(chain) - 1, -1, -1):
            with_, without = pc[len(chain) - 1 - i], pc[len(chain) - i]
            w(f"| {chain[i]} | {with_['cpu_us'] - without['cpu_us']:.1f} | {without['rps']:,.0f} → {with_['rps']:,.0f} |")
        if by[base]:
            w(f"| (router + the proxy itself, vs nginx with its policies) | {pc[-1]['cpu_us'] - next(r for r in rows if r['key'] == base)['cpu_us']:+.1f} | |")
        w("")
    w("## What each side runs")
    w("")
    for line in meta["what"]:
        w(f"- {line}")
    w("")
    if meta.get("missing"):
        w("Not in this bench's Portcullis chain: " + ", ".join(meta["missing"]) + ". The audit log is on in every Portcullis config (the host writes it; it is not a policy).")
        w("")
    w("## Other figures (Portcullis, full chain)")
    w("")
    extra = meta.get("extra", {})
    w("| figure | value |")
    w("|---|---|")
    for k, v in extra.items():
        w(f"| {k} | {v} |")
    w("")
    w("nginx allocates its connection structures for all `worker_connections` when it starts and keeps only a small pool "
      "per idle keep-alive connection, so its RSS hardly moves; Portcullis's figure is what each idle connection costs it "
      "(hyper connection state and buffers, the task).")
    w("")
    if meta.get("chain_cost"):
        w("## Chain cost per policy (`bench/chain-cost`)")
        w("")
        cc = meta["chain_cost"].strip().splitlines()
        if cc and not cc[0].startswith("|"):
            w(cc.pop(0))
            w("")
        w("\n".join(cc))
        w("")
        w("These rows use the test policy (the micro-benchmark's own config); the real policies' share, measured in the proxy, is the table above.")
        w("")
    w("## Commands")
    w("")
    w("```sh")
    for c in meta["commands"]:
        w(c)
    w("```")
    w("")
    w("## Every run")
    w("")
    w("| round | target | load (1 min) | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | CPU µs/req |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        L = r["latency_us"]
        w(f"| {r['round']} | {r['target']} | {r['load']} | {r['rps']:,.0f} | {L['50']:.0f} | {L['90']:.0f} | {L['99']:.0f} | {L['99.9']:.0f} | {L['99.99']:.0f} | {r['latency_max_us']:.0f} | {r['cpu_us_per_req']:.1f} |")
    w("")
    if meta.get("heads"):
        w("## The answers compared (response heads, same request)")
        w("")
        for k, head in meta["heads"].items():
            w(f"`{k}`:")
            w("```http")
            w(head.strip())
            w("```")
        w("")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "side-by-side.md"), "w") as f:
        f.write("\n".join(lines))
    # Gnuplot data: one row per percentile, one column per target (ms).
    pcts = ["50", "75", "90", "99", "99.9", "99.99"]
    with open(os.path.join(work, "latency.dat"), "w") as f:
        f.write("pct " + " ".join(f'"{r["label"]}"' for r in rows) + "\n")
        for p in pcts:
            f.write(f'"p{p}" ' + " ".join(f"{med_pct(r['key'], p) / 1000:.4f}" for r in rows) + "\n")
    # The summary for the terminal.
    print()
    print(f"{'target':<60} {'req/s':>9} {'×nginx':>7} {'p50':>10} {'p99':>10} {'p99.9':>10} {'CPU µs/req':>11}")
    for r in rows:
        print(f"{r['label'][:60]:<60} {r['rps']:>9,.0f} {r['ratio']:>7.2f} {fmt_us(r['p50']):>10} {fmt_us(r['p99']):>10} {fmt_us(r['p999']):>10} {r['cpu_us']:>11.1f}")
    print()
    print(f"ratio Portcullis (full chain) / nginx: {ratio:.2f}")
    for k, v in extra.items():
        print(f"{k}: {v}")
    print(f"load average before: {meta['load_before']}; after: {meta['load_after']}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"ports": cmd_ports, "jwt": cmd_jwt, "cpu": lambda *p: print(f"{cpu_seconds(p):.3f}"), "rss": lambda *p: print(rss_kib(p)),
     "idle": cmd_idle, "line": cmd_line, "report": cmd_report}[cmd](*args)
