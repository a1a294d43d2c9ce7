-- wrk script: POST /api/v1/items with a small JSON body, a new title each request.
-- The bearer token comes from wrk's -H; wrk.format adds wrk.headers to every request.
wrk.headers["Content-Type"] = "application/json"
local made = 0

request = function()
  made = made + 1
  local body = string.format(
    '{"title": "Bench item %d", "description": "Made by bench/run.sh", ' ..
    '"status": "active", "tags": ["bench", "b"]}', made)
  return wrk.format("POST", "/api/v1/items", nil, body)
end
