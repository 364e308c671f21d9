"""The simulated orchard: field nodes and valve controllers on MQTT, and offline physics.

- :mod:`firmware_sim.season`: offline season generator and harvest ground truth
  (``simulate``, ``simulate_arrays``, ``ready_date``), no broker needed.
- :mod:`firmware_sim.physics`, :mod:`firmware_sim.weather`: the vectorised physics.
- :mod:`firmware_sim.runtime`, :mod:`firmware_sim.node`, :mod:`firmware_sim.valves`: the
  live simulator (``python -m firmware_sim`` / ``orchard sim``).
- :mod:`firmware_sim.faults`: fault injection; :mod:`firmware_sim.bench`: scale benchmark.

See ``docs/simulator.md``.
"""
