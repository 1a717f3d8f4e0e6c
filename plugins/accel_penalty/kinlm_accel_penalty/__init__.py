"""kinlm plugin accel_penalty: the acceleration penalty, the DiffWrapper model wrapper and the
trajectory analyzer (Ranjbar, Zare Kordkheili, Maghsoudi 2025, "Investigation of Kinematic
Representation in LLMs")."""

__version__ = "0.1.0"
