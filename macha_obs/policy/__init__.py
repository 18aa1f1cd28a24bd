"""Policy: pure judgement of a typed action (risk, protection, scope, autonomy, limits)."""
