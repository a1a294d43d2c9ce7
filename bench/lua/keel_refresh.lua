-- wrk script: POST /api/v1/auth/token with grant_type=refresh_token.
--
-- Refresh tokens rotate: each is good for one use and the answer carries the next one;
-- using a spent token again ends its session. So the script keeps a pool of live refresh
-- tokens, read from the file named by $BENCH_REFRESH_POOL (one a line, made by password
-- logins before the run), takes one for each request and puts the answer's new token
-- back. The pool must hold more tokens than wrk has connections. When wrk stops, the
-- tokens of requests still in flight are lost (the server may have spent them); done()
-- writes the rest back for the next run and appends the status counts (and how often
-- the pool was empty) to "$BENCH_REFRESH_POOL.tally".
-- With several wrk threads (-t), each thread takes every n-th token ($BENCH_WRK_THREADS).
local pool_path = os.getenv("BENCH_REFRESH_POOL") or error("set BENCH_REFRESH_POOL")
local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

-- Thread state: the pool is a queue, pool[head] .. pool[tail - 1].
pool, statuses, starved = {}, {}, 0
local head, tail = 1, 1

local function put(token)
  pool[tail] = token
  tail = tail + 1
end

function init(args)
  local n = 0
  for line in io.lines(pool_path) do
    if line ~= "" then
      if n % nthreads == thread_no then put(line) end
      n = n + 1
    end
  end
end

request = function()
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Content-Type"] = "application/x-www-form-urlencoded"
  local token = "none-left"  -- an unknown token: answered 400, ends no session
  if head < tail then
    token = pool[head]
    pool[head] = nil
    head = head + 1
  else
    starved = starved + 1
  end
  -- Keel's refresh tokens are URL-safe base64: no encoding needed.
  return wrk.format("POST", "/api/v1/auth/token", headers,
    "grant_type=refresh_token&refresh_token=" .. token)
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local token = body:match('"refresh_token":"([^"]+)"')
    if token then put(token) end
  end
end

-- Main state, after the run: the tokens left go back to the file for the next run.
function done(summary, latency, requests)
  local out = assert(io.open(pool_path, "w"))
  local counts, left, empty = {}, 0, 0
  for _, thread in ipairs(threads) do
    for _, token in pairs(thread:get("pool")) do
      out:write(token, "\n")
      left = left + 1
    end
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
    empty = empty + thread:get("starved")
  end
  out:close()
  local parts = {}
  for status, count in pairs(counts) do parts[#parts + 1] = status .. "=" .. count end
  table.sort(parts)
  local tally = assert(io.open(pool_path .. ".tally", "a"))
  tally:write(table.concat(parts, " "), " pool_left=", left, " pool_empty=", empty, "\n")
  tally:close()
end
