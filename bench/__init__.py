"""Benchmarks of the gateway against the physical limit and the peers (``make bench``).

Every figure is measured against baselines in the same run, as a median with min–max over
several runs, with the server and the load generator in separate processes:

- :mod:`.servers` — the servers under test: the gateway, the raw WebSocket endpoint (the
  physical limit), python-socketio and SSE (the peers), a fake OpenAI server;
- :mod:`.client` — the load generator: one link type per protocol, the workloads;
- :mod:`.replay` — the synthetic demo-shaped task every transport benchmark streams;
- :mod:`.suite` — the workloads, their sizes and the processes;
- :mod:`.report` — the README table and the plot.
"""
