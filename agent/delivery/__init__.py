"""Delivery of alarms to the centre: one package per path (MQTT, SIA DC-09), each supervised."""
