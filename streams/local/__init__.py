"""Local services for the tests, demo and bench: Tansu, Apache Kafka (KRaft) and a
scratch PostgreSQL on this machine. Nothing in production imports them."""
