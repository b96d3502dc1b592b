mod find_nats;
mod nats_server;
mod test_database;
mod wait;
