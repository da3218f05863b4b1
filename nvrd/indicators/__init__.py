"""The recorder's front panel: drive and product LEDs, and the buzzer.

This package is the only code that drives indicator hardware or starts `ledctl`.
It follows storage through the bus; it never changes storage.
"""
