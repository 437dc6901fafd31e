"""HTTP: the h11 front door, and the HTTP/2 server that runs inside Noise."""
