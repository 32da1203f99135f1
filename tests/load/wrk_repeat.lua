-- wrk script for the result-cache workload of the Frameworm benchmark (tests/load/bench.py).
--
-- Repeated inputs: a share FRAMEWORM_BENCH_REPEAT (e.g. 0.9) of the requests cycle through
-- FRAMEWORM_BENCH_HOT bodies (the hot set: hot-000.json, hot-001.json, ... in the directory
-- FRAMEWORM_BENCH_BODIES, written by tests/load/repeat.py); the rest are unique, each with an
-- input never sent before: unique.json with its marker @UNIQUE@ replaced by three values
-- (1.000 to 1.999, distinct in float32) that count up from a random start, so no two requests
-- of a run, nor (but for a one-in-10^9 chance) of two runs, share a unique input. The choice is
-- deterministic: unique whenever the running sum of (1 - repeat) passes a whole number, so
-- exactly that share is unique. Hot bodies go round robin: a hot input comes back every
-- HOT / REPEAT requests, and a cache of more entries than that keeps all of them.
-- Extra headers (e.g. an API key) are given to wrk with -H. done() prints the same
-- FRAMEWORM_BENCH line as wrk_post.lua.

local dir = os.getenv("FRAMEWORM_BENCH_BODIES")
if dir == nil or dir == "" then
  error("set FRAMEWORM_BENCH_BODIES to the directory of hot-NNN.json and unique.json")
end
local hot_n = tonumber(os.getenv("FRAMEWORM_BENCH_HOT") or "")
local repeat_share = tonumber(os.getenv("FRAMEWORM_BENCH_REPEAT") or "")
if hot_n == nil or hot_n < 1 or repeat_share == nil or repeat_share < 0 or repeat_share > 1 then
  error("set FRAMEWORM_BENCH_HOT (>= 1) and FRAMEWORM_BENCH_REPEAT (0..1)")
end

local function slurp(path)
  local file = assert(io.open(path, "rb"))
  local text = file:read("*a")
  file:close()
  return text
end

local template = slurp(dir .. "/unique.json")
local at = string.find(template, "@UNIQUE@", 1, true)
if at == nil then
  error("unique.json lacks the marker @UNIQUE@")
end
local prefix, suffix = string.sub(template, 1, at - 1), string.sub(template, at + 8)
local hot_bodies = {}
for i = 1, hot_n do
  hot_bodies[i] = slurp(string.format("%s/hot-%03d.json", dir, i - 1))
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local hot_requests = {}
local hot_next = 0
local unique_share = 1 - repeat_share
local share_sum = 0
local counter = 0

function init(args)
  -- wrk.headers holds Host and the -H headers by now.
  for i = 1, hot_n do
    hot_requests[i] = wrk.format("POST", nil, nil, hot_bodies[i])
  end
  math.randomseed(os.time())
  counter = math.random(0, 999999999)
end

function request()
  share_sum = share_sum + unique_share
  if share_sum >= 1 - 1e-9 then
    share_sum = share_sum - 1
    counter = (counter + 1) % 1000000000
    local c = counter
    local values = string.format(
      "1.%03d, 1.%03d, 1.%03d", c % 1000, math.floor(c / 1000) % 1000, math.floor(c / 1000000))
    return wrk.format("POST", nil, nil, prefix .. values .. suffix)
  end
  hot_next = hot_next % hot_n + 1
  return hot_requests[hot_next]
end

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
