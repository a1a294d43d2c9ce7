-- Copied unchanged from the project's shared baseline (shared/bench/); only this comment was added.
-- wrk script: GET /user/<random id in 1..10000>
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/user/" .. math.random(1, 10000))
end
