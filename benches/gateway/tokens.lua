-- wrk script: one Authorization header per request, round robin over a file of bearer
-- tokens (one per line). Requests are formatted once in init, so the per-request cost on
-- the load generator's core is one table lookup.
--   wrk ... -s tokens.lua URL TOKENS_FILE [START_INDEX]
local requests = {}
local n = 0
local i = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s tokens.lua URL TOKENS_FILE [START_INDEX]")
   end
   for line in io.lines(path) do
      if #line > 0 then
         n = n + 1
         requests[n] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. line })
      end
   end
   if n == 0 then
      error("no tokens in " .. path)
   end
   i = (tonumber(args[2] or "0") or 0) % n
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return requests[i]
end
