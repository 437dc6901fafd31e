class NoiseError(Exception):
    """The peer broke the Noise protocol; the connection must be closed."""
