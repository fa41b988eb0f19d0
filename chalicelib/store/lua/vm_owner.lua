-- Shared by the scripts that change a VM for the checkout whose owner the API checked
-- (scripts.SHARED: vm_modify.lua, vm_task_enqueue.lua, move.lua's same_checkout): whether the
-- VM's record still names that checkout, its time ('checkout') and owner ('token_user', '' for
-- none), as the API read them. The same name checked out again since (by someone else, maybe at
-- the same time; a checkout never confirmed goes back to ready, and the next caller may take it)
-- is not that checkout. With 'confirmed_running', the VM must also still be running and its
-- checkout confirmed: no 'confirm_by' (a checkout whose answer never reached its caller; a pass
-- gives the VM back to ready, where nothing changed for it would be the next user's to find).
-- 'record' is the index in KEYS of the VM's record (a script touches only the keys it is given).
local function held_by_checkout(record, checkout, owner, confirmed_running)
  local seen = redis.call('HMGET', KEYS[record], 'checkout', 'token_user', 'state', 'confirm_by')
  if (seen[1] or '') ~= checkout or (seen[2] or '') ~= owner then
    return false
  end
  return not confirmed_running or (seen[3] == 'running' and not seen[4])
end
