"""The daemon: one node on the real network, its home directory, worker process and control socket."""
