"""School edge agent: GPIO panic buttons and cameras to the police operations centre over MQTT.

Data flows one way: hardware (buttons, cameras) -> events and segments -> durable outbox -> uplink.
Commands from the centre come back through one place (the uplink's command handler).
See docs/architecture.md for the threading model.
"""

__version__ = "0.1.0"
