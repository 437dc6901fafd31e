"""Moving in and out: ``import headscale`` (its database, Noise key and config.yaml),
``export`` and ``import trioscale`` (one JSON document of everything)."""
