"""The audit log: every change, who made it, from where, and what it was before and after."""
