"""A reusable DERP relay server and STUN responder (see ../shared/docs/protocol/derp.md)."""
