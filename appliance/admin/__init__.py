"""The admin API (/api/v1): typed operations in Headscale's v1 shapes, on the admin socket and the public listener."""
