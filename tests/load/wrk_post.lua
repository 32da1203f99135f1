-- wrk script for the Frameworm benchmark (tests/load/bench.py).
--
-- Sends one POST body, read once from the file named by FRAMEWORM_BENCH_BODY, to every
-- request; extra headers (e.g. an API key) are given to wrk with -H. At the end, done()
-- prints one machine-readable line that bench.py parses:
--   FRAMEWORM_BENCH requests=.. duration_us=.. p50_us=.. ... non2xx=..
-- wrk counts responses with status >= 400 as "status" errors; they are reported as non-2xx
-- and left out of req/s. Latencies are in microseconds.

local path = os.getenv("FRAMEWORM_BENCH_BODY")
if path == nil or path == "" then
  error("set FRAMEWORM_BENCH_BODY to the file holding the JSON request body")
end
local file = assert(io.open(path, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "FRAMEWORM_BENCH requests=%d duration_us=%d bytes=%d mean_us=%.1f max_us=%d"
      .. " p50_us=%d p90_us=%d p95_us=%d p99_us=%d"
      .. " connect=%d read=%d write=%d timeout=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.bytes, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status))
end
