-- wrk script: GET /api/v1/items/<id>, each request a random id from the file named by
-- $BENCH_ITEM_IDS (one id a line), as the floor's random_user.lua picks a random user.
-- The bearer token comes from wrk's -H, which wrk.format adds to every request.
local path = os.getenv("BENCH_ITEM_IDS") or error("set BENCH_ITEM_IDS")
local ids = {}
for line in io.lines(path) do
  if line ~= "" then ids[#ids + 1] = line end
end
assert(#ids > 0, "no item ids in " .. path)
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/api/v1/items/" .. ids[math.random(1, #ids)])
end
