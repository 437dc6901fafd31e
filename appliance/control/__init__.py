"""The control protocol's application layer: register and map, inside Noise + HTTP/2."""
