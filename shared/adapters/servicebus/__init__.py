"""Azure Service Bus: the command bus and its dead-letter queues."""
