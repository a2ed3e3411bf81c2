"""affectstream.streaming: the worker (production), the operators' view (monitor) and the local tools."""
