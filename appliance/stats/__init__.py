"""Coarse samples of the tailnet over time, for the console's charts."""
