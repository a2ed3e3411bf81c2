"""The streaming worker: settings, schemas, Kafka and Redis clients, stages, agents, sinks. What production runs."""
