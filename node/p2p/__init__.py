"""The libp2p side (hivemind-style): ``libp2p`` (the host and the message stream protocol: the
Transport and PeerNetwork contracts), ``discovery`` (one service over ``announcements``,
``providers`` and ``dialing``, set by ``config``), ``gate`` (what a peer may cost), ``service``
(start/stop), ``logs`` (py-libp2p's warnings, bounded). Only ``upstream`` touches py-libp2p's
private internals, and only on the version it pins."""
