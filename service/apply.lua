-- Apply absolute values to one sorted set, each only if its version is newer than the one
-- stored beside the set. Redelivered or out-of-order writes therefore never go backwards.
-- KEYS[1] sorted set, KEYS[2] versions hash, KEYS[3] board revision counter
-- ARGV[1] expire-at in unix ms (0: never expires)
-- then groups of four: player_id, version, stored score, member ('' removes the player)
-- Returns how many rows were applied (each row in order, as if applied one by one).
--
-- The rows are judged here and written with one variadic HMGET, ZREM, ZADD and HSET per
-- call, not three commands a row: each redis.call costs the command's dispatch and its
-- propagation to the AOF again, which was about half the script's time for a consumer
-- batch. A player's rows in one call fold into its final state: the member it held
-- before the call leaves the set (unless it is the final one) and the final member is
-- added, which is what applying the rows one by one leaves behind.

-- Arguments per command at most: Lua's unpack (and a command's argv) stay bounded however
-- many rows a call carries.
local CHUNK = 4000

local function each_chunk(args, fn)
  for i = 1, #args, CHUNK do
    fn(unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end

local players = {}
for i = 2, #ARGV, 4 do
  players[#players + 1] = ARGV[i]
end
if #players == 0 then
  return 0
end
local stored = {}
each_chunk(players, function(...)
  for _, value in ipairs(redis.call('HMGET', KEYS[2], ...)) do
    stored[#stored + 1] = value
  end
end)

local version_of, member_of, before_of, score_of = {}, {}, {}, {}
local changed = {}  -- players in order of their first applied row
local applied = 0
for n, player in ipairs(players) do
  local i = 4 * n - 2
  local version, score, member = tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  if version_of[player] == nil then
    local current = stored[n]
    local current_version, current_member = 0, false
    if current then
      local sep = string.find(current, '|', 1, true)
      if sep then
        current_version = tonumber(string.sub(current, 1, sep - 1))
        current_member = string.sub(current, sep + 1)
      else
        current_version = tonumber(current)
        current_member = player
      end
    end
    version_of[player], member_of[player], before_of[player] =
      current_version, current_member, current_member
  end
  if version > version_of[player] then
    if score_of[player] == nil then
      changed[#changed + 1] = player
    end
    version_of[player], member_of[player], score_of[player] = version, member, score
    applied = applied + 1
  end
end

if applied > 0 then
  local removed, added, versions = {}, {}, {}
  for _, player in ipairs(changed) do
    local before, member, version = before_of[player], member_of[player], version_of[player]
    if before and before ~= '' and before ~= member then
      removed[#removed + 1] = before
    end
    if member ~= '' then
      added[#added + 1] = score_of[player]
      added[#added + 1] = member
    end
    versions[#versions + 1] = player
    if member == player then
      versions[#versions + 1] = version
    else
      versions[#versions + 1] = version .. '|' .. member
    end
  end
  -- Removals first: a member removed is never one added (members carry their player).
  each_chunk(removed, function(...) redis.call('ZREM', KEYS[1], ...) end)
  each_chunk(added, function(...) redis.call('ZADD', KEYS[1], ...) end)
  each_chunk(versions, function(...) redis.call('HSET', KEYS[2], ...) end)
  redis.call('INCR', KEYS[3])
  local expire_at = tonumber(ARGV[1])
  if expire_at > 0 then
    redis.call('PEXPIREAT', KEYS[1], expire_at)
    redis.call('PEXPIREAT', KEYS[2], expire_at)
  end
end
return applied
