mod browser;
pub mod common;
mod crash;
mod diskfull;
mod e2e;
mod engine;
mod schema;
