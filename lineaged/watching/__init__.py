"""Seeing the files under the roots change, and turning what is there into versions.

- ``watcher``: a watchdog observer per root (``RootWatcher``) whose handler only enqueues a
  ``Change``, and the ``Pipeline`` thread that settles bursts per path and hands them on;
  also the filesystem facts a watch depends on (``root_identity``, ``filesystem_type``).
- ``deepwatch``: ``DeepWatcher``, lineaged's own iterative inotify walker for trees deeper
  than watchdog can follow.
- ``indexer``: the roots as the daemon runs them (``WatchedRoot``, ``RootSet``) and the
  ``Indexer`` that stats, hashes through the stat cache and records a path's present state.
- ``scanner``: the reconcile scan, which compares a whole tree with the store.
- ``lanes``: the hash lanes, threads that hash big files (and what a client's call could not
  wait for) off the threads that must keep moving.

What runs these (when to scan, restarting watchers, a root's health) is the engine's
``supervision`` module.
"""
