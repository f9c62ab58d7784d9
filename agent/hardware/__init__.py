"""The school's wiring: panic buttons in (GPIO edges to alarms) and the alarm LED and buzzer out.

gpiozero sits behind one pin factory chosen in one place (buttons.make_pin_factory); tests and
the simulated school use its MockFactory, which behaves like the pins it stands for.
"""
