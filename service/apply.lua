-- Apply absolute values to one sorted set, each only if its version is newer than the one
-- stored beside the set. Redelivered or out-of-order writes therefore never go backwards.
-- KEYS[1] sorted set, KEYS[2] versions hash, KEYS[3] board revision counter
-- ARGV[1] expire-at in unix ms (0: never expires)
-- then groups of four: player_id, version, stored score, member ('' removes the player)
-- Returns how many players changed.
local applied = 0
for i = 2, #ARGV, 4 do
  local player, version, score, member = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local current = redis.call('HGET', KEYS[2], player)
  local current_version, current_member = 0, nil
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
  if version > current_version then
    if current_member and current_member ~= '' and current_member ~= member then
      redis.call('ZREM', KEYS[1], current_member)
    end
    if member == '' then
      redis.call('HSET', KEYS[2], player, version .. '|')
    else
      redis.call('ZADD', KEYS[1], score, member)
      if member == player then
        redis.call('HSET', KEYS[2], player, version)
      else
        redis.call('HSET', KEYS[2], player, version .. '|' .. member)
      end
    end
    applied = applied + 1
  end
end
if applied > 0 then
  redis.call('INCR', KEYS[3])
  local expire_at = tonumber(ARGV[1])
  if expire_at > 0 then
    redis.call('PEXPIREAT', KEYS[1], expire_at)
    redis.call('PEXPIREAT', KEYS[2], expire_at)
  end
end
return applied
