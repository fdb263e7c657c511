"""An Argo CD resource health check run the way Argo CD runs it, in lupa's Lua 5.1.

Argo CD runs health checks in gopher-lua, a Lua 5.1 VM; this is a port of what
argo-cd's util/lua/lua.go does (runLuaWithResourceActionParameters and ExecuteHealthLua,
at commit 37ee0097cf851bc2dd7665fc081bbce61a7e836e, 2026-08-22), for a check without
`resource.customizations.useOpenLibs`:

- a fresh state per call with only the package, base and table libraries and a "safe"
  os (time and date) opened. lupa's runtime opens every standard library, so string,
  math, io, debug and coroutine are removed again, with the string metatable (no
  `("x"):find(...)`) and `require` of them;
- the object as the global `obj`, decoded as decodeValue does: objects become tables,
  lists 1-based arrays, numbers Lua numbers, null nil;
- the chunk's return value read as a HealthStatus: nil is an empty status; a table with
  a status outside Healthy, Progressing, Suspended, Degraded, Missing, Unknown is
  Unknown "Lua returned an invalid health status"; a table that does not decode into
  {status, message} strings is an empty status; anything else is an error.
"""

from __future__ import annotations

import json
from typing import Any

from lupa import lua51

HEALTH_STATUSES = frozenset({"Healthy", "Progressing", "Suspended", "Degraded", "Missing",
                             "Unknown"})
INVALID = "Lua returned an invalid health status"

_SANDBOX = """
local safe_os = {time = os.time, date = os.date}
debug.setmetatable("", nil)
for _, name in ipairs({"string", "math", "io", "debug", "coroutine"}) do
  _G[name] = nil
  package.loaded[name] = nil
end
os = safe_os
package.loaded.os = safe_os
package.path = ""
package.cpath = ""
"""


class LuaHealthError(RuntimeError):
    """Argo CD would report the check itself as failed (an error, not a health status)."""


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            table[str(key)] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        array = runtime.table()
        for index, item in enumerate(value, 1):
            array[index] = _to_lua(runtime, item)
        return array
    return value


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) Argo CD shows for `obj` with health check `script`."""
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    runtime.execute(_SANDBOX)
    # The object as the API server sends it: JSON types only.
    runtime.globals().obj = _to_lua(runtime, json.loads(json.dumps(obj)))
    try:
        result = runtime.execute(script)
    except lua51.LuaError as exc:
        raise LuaHealthError(str(exc)) from exc
    if result is None:
        return "", ""
    if lua51.lua_type(result) != "table":
        kind = lua51.lua_type(result) or type(result).__name__
        raise LuaHealthError(f"expect table output from Lua script, not {kind}")
    fields = dict(result.items())
    if not fields or not all(isinstance(key, str) for key in fields):
        return "", ""  # encoded as a JSON array: an empty HealthStatus
    status, message = fields.get("status", ""), fields.get("message", "")
    if not isinstance(status, str) or not isinstance(message, str):
        return "", ""
    if status not in HEALTH_STATUSES:
        return "Unknown", INVALID
    return status, message
