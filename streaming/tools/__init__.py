"""Local tools: embedded broker and Redis, the demo, the bundled sample, a producer and a tail. Not used by production workers."""
