"""The pipeline's handlers: what each agent does with one fetch of its topic (no Kafka
consumer or Faust service here: the agents in ``agents/`` run them)."""
