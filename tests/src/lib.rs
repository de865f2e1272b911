
pub mod harness;
pub mod pushgateway;
