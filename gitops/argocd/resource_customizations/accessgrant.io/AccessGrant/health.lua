-- Argo CD health check for accessgrant.io/AccessGrant (Lua 5.1; Argo CD runs gopher-lua).
-- Active is Healthy; a grant that has ended as asked (Expired, Revoked, DryRun) is Healthy too,
-- or Suspended when spec.suspend took its access away; Denied and Failed are Degraded with the
-- operator's message; everything on the way (and a spec the operator has not seen yet) is
-- Progressing. An expired grant is not an error: it did what it was declared to do.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the grant"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to see generation " .. tostring(generation)
  return hs
end
local phase = status.phase
local message = status.message or ""
local reason = status.reason
local function words()
  if reason ~= nil and reason ~= phase then
    return phase .. " (" .. reason .. "): " .. message
  end
  return phase .. ": " .. message
end
if phase == "Active" then
  hs.status = "Healthy"
elseif phase == "Expired" or phase == "DryRun" then
  hs.status = "Healthy"
elseif phase == "Revoked" then
  if obj.spec ~= nil and obj.spec.suspend == true then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
elseif phase == "Denied" or phase == "Failed" then
  hs.status = "Degraded"
else
  -- Pending, Scheduled, Requesting, PendingApproval, Renewing, Revoking
  hs.status = "Progressing"
end
hs.message = words()
return hs
