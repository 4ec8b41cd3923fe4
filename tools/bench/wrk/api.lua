-- wrk script of `hcp bench api`. HCP_WRK_MODE picks the request:
--   resource        GET /api/v1/resources/{random device of HCP_WRK_DEVICES}
--   recommendations GET /api/v1/recommendations?site={random site}&limit=100
--   post            POST HCP_WRK_PATH with the body in file HCP_WRK_BODY
-- HCP_WRK_KEY, when set, is sent as the bearer key. Device ids follow
-- tools/bench/redis_sink.py synthetic_recs: every 5th is "gpu-NNNNNNN", the rest "asic-NNNNNNN".
local mode = os.getenv("HCP_WRK_MODE") or "resource"
local devices = tonumber(os.getenv("HCP_WRK_DEVICES") or "1000")
local sites = {"tx-1", "tx-2", "ga-1", "nd-1", "wy-1"}
local key = os.getenv("HCP_WRK_KEY")
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() + (seed or 0) * 7919)
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
  if mode == "post" then
    local f = assert(io.open(os.getenv("HCP_WRK_BODY"), "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.method = "POST"
    wrk.path = os.getenv("HCP_WRK_PATH")
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  if mode == "resource" then
    local i = math.random(0, devices - 1)
    local kind = (i % 5 == 0) and "gpu" or "asic"
    return wrk.format("GET", string.format("/api/v1/resources/%s-%07d", kind, i))
  elseif mode == "recommendations" then
    local site = sites[math.random(1, #sites)]
    return wrk.format("GET", "/api/v1/recommendations?site=" .. site .. "&limit=100")
  end
  return wrk.format()
end
