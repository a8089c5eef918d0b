-- wrk script for bench/run: the request's headers come from BENCH_HEADERS
-- ("Name: value" lines), and done() prints one JSON line (prefix BENCHJSON)
-- with the counts and the latency percentiles wrk's --latency does not show
-- (p99.9, p99.99), in microseconds.

wrk.method = "GET"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local k, v = line:match("^%s*([^:]+):%s*(.-)%s*$")
  if k then wrk.headers[k] = v end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"latency_mean_us":%.1f,"latency_max_us":%d,"latency_us":{',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, latency.mean, latency.max)
  local first = true
  for _, p in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
    if not first then out = out .. "," end
    first = false
    out = out .. string.format('"%s":%d', (tostring(p):gsub("%.0$", "")), latency:percentile(p))
  end
  io.write(out .. "}}\n")
end
