"""The node and what it does with knowledge: Node, the exchanges, reputation, the Transport contract."""
