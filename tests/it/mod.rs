mod browser;
pub mod common;
mod corruption;
mod crash;
mod diskfull;
mod e2e;
mod engine;
mod openapi;
mod schema;
