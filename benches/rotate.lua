-- wrk script of benches/load.sh: every request names the next of MERCHANTS merchants
-- (m000001, m000002, ...), in the query (so the upstream knows whose token to expect) and,
-- through a proxy, in X-Merchant-Id with a dummy API key the proxy must replace.
-- MODE=direct sends the right token itself and no merchant header (the upstream alone).
-- Requests are built once in init(), so wrk spends its time sending, not formatting.
--
-- MERCHANTS=1000 MODE=proxy TOKEN_SUFFIX=... wrk -t1 -c64 -d10s -s benches/rotate.lua http://127.0.0.1:8080

local n = tonumber(os.getenv("MERCHANTS") or "1000")
-- PREFIX=s: the short-lived storm merchants s000001, ... (load.sh replicas).
local prefix = os.getenv("PREFIX") or "m"
local direct = os.getenv("MODE") == "direct"
local suffix = os.getenv("TOKEN_SUFFIX") or "gatewaybench0123456789"
local key = os.getenv("DUMMY_KEY") or "live_gatewaygatewaygatewaygatewayga"
local requests = {}
-- START: begin the rotation after this many merchants (load.sh scale resumes where it was).
local i = tonumber(os.getenv("START") or "0") % n

function init(args)
   for k = 1, n do
      local m = string.format("%s%06d", prefix, k)
      local headers = { ["User-Agent"] = "Mollie/4.0.0 Python/3.12.1", ["Accept"] = "application/json" }
      if direct then
         headers["Authorization"] = "Bearer access_" .. m .. "_" .. suffix
      else
         headers["Authorization"] = "Bearer " .. key
         headers["X-Merchant-Id"] = m
      end
      requests[k] = wrk.format("GET", "/v2/methods/ideal?m=" .. m, headers)
   end
end

function request()
   i = i % n + 1
   return requests[i]
end

-- One machine-readable line for load.sh.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d rps=%.1f p50=%d p99=%d p999=%d non2xx=%d errors=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      e.status, e.connect + e.read + e.write + e.timeout))
end
