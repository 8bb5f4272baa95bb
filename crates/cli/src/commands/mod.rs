//! One module per subcommand. Each takes the resolved settings and its own arguments, writes
//! its report to `out`, and returns the process's exit status.

pub mod bench;
pub mod checkpoint;
pub mod consumer;
pub mod demo;
pub mod duplicates;
pub mod exception;
pub mod export;
pub mod find;
pub mod history;
pub mod household;
pub mod keys;
pub mod merge;
pub mod migrate;
pub mod processor;
pub mod rebuild;
pub mod receipt;
pub mod reconcile;
pub mod record;
pub mod restrict;
pub mod retention;
pub mod serve;
pub mod token;
pub mod verify;
