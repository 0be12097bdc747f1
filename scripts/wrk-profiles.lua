-- wrk script for scripts/bench-pipeline.sh: GET random profiles at a paced
-- rate. Debian's wrk has no rate option (that is wrk2's -R), so each thread
-- hands out send times BENCH_RATE / BENCH_THREADS apart and every request
-- waits for its slot (wrk's delay(), in whole milliseconds, so a request
-- may leave up to a millisecond early; the mean rate is exact). Slots
-- missed while every connection was busy are caught up for at most
-- CATCH_UP_MS: a longer stall lowers the rate instead of ending in a burst.
-- The rate reached is printed. BENCH_THREADS must match wrk's -t.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local users = tonumber(os.getenv("BENCH_USERS") or "20000")
local rate = tonumber(os.getenv("BENCH_RATE") or "5000")
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")
local interval_ms = 1000 * threads / rate
local next_slot = nil
local CATCH_UP_MS = 20

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

function init(args)
  math.randomseed(os.time() + math.random(1, 1000000))
end

function request()
  local path = string.format("/api/v1/profiles/bench-u%d", math.random(0, users - 1))
  return wrk.format("GET", path)
end

function delay()
  local now = now_ms()
  local slot = math.max(next_slot or now, now - CATCH_UP_MS)
  next_slot = slot + interval_ms
  return math.floor(slot - now)
end

-- errors: responses with a status over 399 (a 404 included) and socket
-- errors.
function done(summary, latency, requests)
  local rate = summary.requests / (summary.duration / 1e6)
  io.write(string.format("BENCH requests=%d rate=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d\n",
    summary.requests, rate, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
