"""The control loop: readings in, irrigation commands, alarms and daily agronomy out.

Stable modules other services build on: :mod:`control.store` (tables),
:mod:`control.alarms` (alarm lifecycle), :mod:`control.thresholds` (effective
thresholds and overrides), :mod:`control.webhooks` (signed outbound notifications),
:mod:`control.backtest` (replay of history with proposed thresholds).
"""
