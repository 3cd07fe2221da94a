//! Writing outputs so that a reader killed at any instant never leaves a
//! partial file, a lost record or a duplicated one.

pub mod access;
pub mod applog;
pub mod atomic;
#[cfg(test)]
pub mod golden;
pub mod jsonw;
pub mod otlp;
pub mod owner;
pub mod promtext;
pub mod snapshot;

pub(crate) use owner::apply_group;
