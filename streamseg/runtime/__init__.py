"""The machinery every stage runs on, in one worker process each.

- :mod:`.stage`: the stage contract (``setup``, ``process``, ``flush``, ``close``); stages never touch sockets;
- :mod:`.messages` and :mod:`.codec`: the messages on the data path and their wire form (a JSON
  header plus array buffers, never pickle), with :mod:`.shm` for frames in shared memory;
- :mod:`.link` and :mod:`.ledger`: at-least-once links with acknowledgements and credit, and when an
  input counts as done; :mod:`.reorder` and :mod:`.admission`: each stream's order restored and its
  repeats dropped;
- :mod:`.spec`: what a worker is given (:class:`~.spec.WorkerSpec`); :mod:`.worker`: the runtime
  that drives a stage through its lifecycle; :mod:`.process`: the process around it (signals).

Nothing here imports the orchestration (plan, supervisor) or a stage module; the worker finds its
stage class through the table in :mod:`streamseg.stages`.
"""
