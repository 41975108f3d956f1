-- Argo CD health check for the OpsConductor kinds (Target, Credential, OpsJob, OpsSchedule).
-- One script for all four: Argo CD gives it the live object as `obj` and reads the returned table.
-- It follows the operator's kstatus conditions (Ready / Reconciling / Stalled, observedGeneration),
-- so Argo CD, Flux and kstatus agree; tests/e2e/test_gitops_health.py checks that on live objects.
-- Install: see docs/gitops.md (argocd-cm keys resource.customizations.health.opsconductor.io_<Kind>).
local hs = { status = "Progressing", message = "waiting for the operator to report status" }

local function condition(wanted)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function text(value, fallback)
  if value == nil or value == "" then
    return fallback
  end
  return value
end

if obj.kind == "OpsSchedule" and obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "suspended: the schedule creates no runs"
  return hs
end

if obj.status == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "the operator has not observed generation " .. generation .. " yet"
  return hs
end

local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local ready = condition("Ready")

if obj.kind == "OpsJob" then
  local phase = obj.status.phase
  if phase == "Succeeded" then
    hs.status = "Healthy"
    hs.message = text(obj.status.message, "the run succeeded")
  elseif phase == "Failed" or phase == "Cancelled" then
    hs.status = "Degraded"
    hs.message = phase .. ": " .. text(obj.status.message, "see the OpsJob's conditions")
  elseif stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = text(stalled.message, stalled.reason)
  else
    hs.message = "the run is " .. string.lower(text(phase, "Pending"))
  end
  return hs
end

-- Targets, Credentials, OpsSchedules: as kstatus reads them. Ready False without Stalled (a Target
-- unreachable right now, probed again with backoff) is still in progress, not failed.
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled.message, stalled.reason)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.message = text(reconciling.message, reconciling.reason)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready.message, ready.reason)
elseif ready ~= nil then
  hs.message = text(ready.message, ready.reason)
end
return hs
