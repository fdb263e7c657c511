"""Canary rollouts: a pure state machine, analysis of runtime metrics, and the driver."""
