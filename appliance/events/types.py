"""The event types webhooks subscribe to (the config file and the API check against these)."""

EVENT_TYPES = (
    "node.created", "node.deleted", "node.online", "node.offline", "node.key_expiring", "node.key_expired",
    "route.approved", "policy.changed", "user.created",
)
ALL = "*"
