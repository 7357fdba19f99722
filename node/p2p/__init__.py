"""The libp2p side: hosts, the message stream protocol, announcements, providers and dialing.
Only `upstream` touches py-libp2p's private internals."""
