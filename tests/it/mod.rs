mod browser;
pub mod common;
mod crash;
mod e2e;
mod engine;
mod schema;
