-- Argo CD health check for modelship.io/ModelDeployment.
-- argocd-cm key: resource.customizations.health.modelship.io_ModelDeployment, set by the
-- kustomize component kustomize/components/argocd-health (see docs/gitops.md).
-- The status follows kstatus (observedGeneration; Ready, Reconciling, Stalled) plus a
-- phase. Only Lua 5.1's base and table libraries are used: Argo CD opens no others.
local hs = {}

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the modelship operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. generation ..
    " (status describes generation " .. observed .. ")"
  return hs
end

local phase = obj.status.phase
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local ready = condition("Ready")

-- Rolled back (the previous version serves) or a spec the operator cannot honour:
-- nothing moves until spec changes.
if (stalled ~= nil and stalled.status == "True") or phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(stalled, text(ready, "Phase " .. tostring(phase)))
  return hs
end

-- spec.rollout.paused holds the canary's weight: waiting for a person, as Argo CD's own
-- check reports a paused Argo Rollout.
if reconciling ~= nil and reconciling.status == "True" and reconciling.reason == "RolloutPaused" then
  hs.status = "Suspended"
  hs.message = text(reconciling, "Canary paused by spec.rollout.paused")
  return hs
end

if (reconciling ~= nil and reconciling.status == "True") or phase == "Progressing" or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = text(reconciling, text(ready, "Phase " .. tostring(phase)))
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the Ready condition")
return hs
