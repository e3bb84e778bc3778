-- Argo CD resource health for tenancy.dev/StoreClass (Lua 5.1, as Argo CD runs it).
--   Healthy      Ready=True for the current generation: the backends are reachable and meet the prerequisites
--   Degraded     Ready=False: tenants cannot be made with this class (the message says why)
--   Progressing  the operator has not checked the current generation yet
local hs = {status = "Progressing", message = "Waiting for the operator to check the class"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation or 0
local observed = obj.status.observedGeneration or 0
if observed < generation then
  hs.message = "Waiting for the operator to check generation " .. tostring(generation)
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    local text = (condition.reason or "") .. ": " .. (condition.message or "")
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.status == "False" then
      hs.status = "Degraded"
    end
    hs.message = text
    return hs
  end
end
return hs
