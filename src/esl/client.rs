//! The inbound ESL client.
