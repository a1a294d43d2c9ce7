-- wrk script: PATCH /api/v1/items/<id> with If-Match: "<current version>".
--
-- Every PATCH bumps the item's version, so a fixed If-Match would fail with 412 from the
-- second request on. The items and their versions are in the file named by
-- $BENCH_PATCH_STATE, one "<id> <version> <unsure>" a line. Requests go round-robin over
-- the items (1,000 of them: far more than wrk's connections, so one item never has two
-- PATCHes in flight), and each 200 answer's body gives the item's new version.
-- When wrk stops, requests still in flight may or may not have been applied: such an item
-- is written back with <unsure> 1 (or more), and its next PATCH names every version it
-- may have ("3", "4"), which If-Match allows. So nearly every request is a success; the
-- statuses are counted and appended to "$BENCH_PATCH_STATE.tally" by done().
-- With several wrk threads (-t), each thread takes every n-th item ($BENCH_WRK_THREADS).
local state_path = os.getenv("BENCH_PATCH_STATE") or error("set BENCH_PATCH_STATE")
local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
local threads = {}

-- Main state: give each thread its number before its init() runs.
function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

-- Thread state.
ids, versions, unsure, in_flight, statuses = {}, {}, {}, {}, {}
local next_index = 1
local patches = 0

function init(args)
  local n = 0
  for line in io.lines(state_path) do
    local id, version, doubt = line:match("^(%S+)%s+(%d+)%s*(%d*)")
    if id then
      if n % nthreads == thread_no then
        ids[#ids + 1] = id
        versions[id] = tonumber(version)
        unsure[id] = tonumber(doubt) or 0
      end
      n = n + 1
    end
  end
  assert(#ids > 0, "no items in " .. state_path)
end

local function if_match(id)
  local tags = {}
  for v = versions[id], versions[id] + unsure[id] do tags[#tags + 1] = '"' .. v .. '"' end
  return table.concat(tags, ", ")
end

request = function()
  local id = ids[next_index]
  next_index = next_index % #ids + 1
  patches = patches + 1
  in_flight[id] = true
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Content-Type"] = "application/json"
  headers["If-Match"] = if_match(id)
  local body = '{"description": "patch ' .. patches .. '"}'
  return wrk.format("PATCH", "/api/v1/items/" .. id, headers, body)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local id = body:match('"id":"([^"]+)"')
    local version = tonumber(body:match('"version":(%d+)'))
    if id and version and versions[id] then
      versions[id] = version
      unsure[id] = 0
      in_flight[id] = nil
    end
  end
end

-- Main state, after the run: write every thread's items back, and the status counts.
function done(summary, latency, requests)
  local out = assert(io.open(state_path, "w"))
  local counts = {}
  for _, thread in ipairs(threads) do
    local t_ids, t_versions = thread:get("ids"), thread:get("versions")
    local t_unsure, t_in_flight = thread:get("unsure"), thread:get("in_flight")
    for _, id in ipairs(t_ids) do
      local doubt = t_unsure[id] + (t_in_flight[id] and 1 or 0)
      out:write(id, " ", t_versions[id], " ", doubt, "\n")
    end
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  out:close()
  local parts = {}
  for status, count in pairs(counts) do parts[#parts + 1] = status .. "=" .. count end
  table.sort(parts)
  local tally = assert(io.open(state_path .. ".tally", "a"))
  tally:write(table.concat(parts, " "), "\n")
  tally:close()
end
