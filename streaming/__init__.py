"""affectstream.streaming: the faust app, its agents, sinks, embedded services and the command line."""
