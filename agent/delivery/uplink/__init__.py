"""The MQTT uplink: the one connection from the box to the broker (see link.py)."""
