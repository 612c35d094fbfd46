//! The bus conformance suite (`gateway_tests::bus::suite`) on every bus
//! backend: one line per engine. A new broker's engine goes here too.

gateway_tests::conformance!(redis, gateway_tests::bus::redis::RedisEngine);
gateway_tests::conformance!(nats, gateway_tests::bus::nats::NatsEngine);
gateway_tests::conformance!(postgres, gateway_tests::bus::postgres::PostgresEngine);
gateway_tests::conformance!(rabbitmq, gateway_tests::bus::rabbitmq::RabbitEngine);
