-- Argo CD resource health for tenancy.dev/TenantStore (Lua 5.1, as Argo CD runs it).
-- Reads only what the operator publishes the kstatus way: status.observedGeneration, the Ready condition
-- and status.phase.
--   Healthy      Ready=True for the current generation
--   Suspended    spec.suspended: the tenant cannot connect, its data is kept (Ready=False, reason Suspended)
--   Degraded     phase Failed (e.g. TenantIdConflict, SecretConflict, StoreClassInvalid), or a tenant that was
--                Ready and lost its backend (phase still Ready/Suspended while Ready=False)
--   Progressing  everything else: not yet observed, Pending (e.g. StoreClassNotFound), Provisioning,
--                Migrating, Deleting
local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
if obj.status == nil then
  return hs
end

local ready = nil
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
local phase = obj.status.phase or ""
local generation = obj.metadata.generation or 0
local observed = obj.status.observedGeneration or 0

local function describe(prefix)
  local text = prefix
  if ready ~= nil and ready.reason ~= nil and ready.reason ~= "" then
    text = text .. " (" .. ready.reason .. ")"
  end
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    text = text .. ": " .. ready.message
  end
  return text
end

if obj.metadata.deletionTimestamp ~= nil or phase == "Deleting" then
  hs.status = "Progressing"
  hs.message = describe("Deleting")
  return hs
end
if observed < generation or ready == nil then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe("Ready")
  return hs
end
if phase == "Suspended" and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe("Suspended")
  return hs
end
if phase == "Failed" or phase == "Ready" or phase == "Suspended" then
  hs.status = "Degraded"
  hs.message = describe(phase == "Failed" and "Failed" or "Not ready")
  return hs
end
hs.status = "Progressing"
hs.message = describe(phase ~= "" and phase or "Not ready")
return hs
