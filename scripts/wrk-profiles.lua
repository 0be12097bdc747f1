-- wrk script for scripts/bench-pipeline.sh: GET random profiles at a paced
-- rate. Each connection waits DELAY_MS between requests, so
-- connections × 1000 / DELAY_MS bounds the request rate (wrk itself has no
-- rate option).
local users = tonumber(os.getenv("BENCH_USERS") or "20000")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "10")

function init(args)
  math.randomseed(os.time() + math.random(1, 1000000))
end

function request()
  local path = string.format("/api/v1/profiles/bench-u%d", math.random(0, users - 1))
  return wrk.format("GET", path)
end

function delay()
  return delay_ms
end

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local rate = summary.requests / (summary.duration / 1e6)
  io.write(string.format("BENCH requests=%d rate=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d\n",
    summary.requests, rate, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
