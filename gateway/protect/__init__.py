"""Pure response-protection math, used by the response stages in ``gateway.stages``.

Nothing here does I/O or reads the policy: functions take values and parameters and
return new values, so each control can be tested (and benchmarked) on its own.
"""
